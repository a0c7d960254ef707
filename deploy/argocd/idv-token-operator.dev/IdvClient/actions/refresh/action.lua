-- A new value of idv-token-operator.dev/force-refresh makes the operator fetch exactly one new
-- token (the old one stays valid in the Secret until then). The value is the time, to the second.
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["idv-token-operator.dev/force-refresh"] = os.date("!%Y-%m-%dT%XZ")
return obj
