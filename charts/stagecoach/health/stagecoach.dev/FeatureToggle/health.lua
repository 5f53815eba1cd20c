-- Argo CD health of a stagecoach.dev FeatureToggle (Lua 5.1, as Argo CD runs it).
--   not yet seen by the operator, or an older generation seen -> Progressing
--   Accepted=False, Ready=False                               -> Degraded, with reason and message
--   Ready=True                                                 -> Healthy
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function explain(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stagecoach operator to pick up the toggle"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stagecoach operator to observe generation " .. tostring(generation)
  return hs
end

local accepted = condition(status, "Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = "Spec not accepted: " .. explain(accepted)
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = explain(ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Stagecoach operator to decide whether the toggle is served"
return hs
