-- Argo CD health of a stagecoach.dev Pipeline (Lua 5.1, as Argo CD runs it).
--   not yet seen by the operator, or an older generation seen -> Progressing
--   Ready=True (in force for its application's releases)      -> Healthy
--   Ready=False (another Pipeline claims the application, a stage without a
--   namespace, ...: its releases wait)                        -> Degraded, with reason and message
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

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stagecoach operator to pick up the pipeline"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stagecoach operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  if status.stages ~= nil then
    hs.message = hs.message .. " (stages " .. status.stages .. ")"
  end
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.reason .. ": " .. ready.message
  else
    hs.message = ready.reason
  end
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the Stagecoach operator to check the pipeline"
return hs
