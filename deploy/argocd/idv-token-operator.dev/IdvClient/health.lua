-- Argo CD health of an IdvClient (idv-token-operator.dev), as kstatus reads it too: the
-- operator must have observed the current generation; Ready reason Suspended is Suspended,
-- Stalled=True Degraded, Reconciling=True Progressing, Ready=True Healthy. Runs with the
-- libraries Argo CD gives argocd-cm scripts (base, table, package, os.time/os.date only).
local hs = {}
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report on the IdvClient"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
    .. " (the status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end
local ready, reconciling, stalled
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Stalled" and condition.status == "True" then
    stalled = condition
  elseif condition.type == "Reconciling" and condition.status == "True" then
    reconciling = condition
  end
end
if ready ~= nil and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = ready.message
elseif stalled ~= nil then
  hs.status = "Degraded"
  hs.message = stalled.message
elseif reconciling ~= nil then
  hs.status = "Progressing"
  hs.message = reconciling.message
elseif ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
elseif ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.message
else
  hs.status = "Progressing"
  hs.message = ready.message
end
return hs
