-- Argo CD resource actions of an IdvClient: `refresh` fetches one new token now. A suspended
-- client fetches none, so there it is disabled.
local actions = {}
actions["refresh"] = {["disabled"] = obj.spec ~= nil and obj.spec.suspend == true}
return actions
