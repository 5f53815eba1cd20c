-- Argo CD health of a stagecoach.dev Release (Lua 5.1, as Argo CD runs it).
--   not yet seen by the operator, or an older generation seen  -> Progressing
--   spec not accepted, Stalled (outside edit, rolled back, failed, rejected) -> Degraded
--   Stalled because a gate stayed inconclusive (held for a person) -> Suspended
--   RolledBack, Failed                                          -> Degraded
--   Paused, AwaitingApproval, WaitingForWindow                  -> Suspended
--   Pending, Progressing                                        -> Progressing
--   EarlyLifeSupport (deployed, still watched), Succeeded, Superseded -> Healthy
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
  hs.message = "Waiting for the Stagecoach operator to pick up the release"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stagecoach operator to observe generation " .. tostring(generation)
  return hs
end

-- The operator's one line for people, or `otherwise` when it wrote none.
local function say(otherwise)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return otherwise
end

local accepted = condition(status, "Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = "Spec not accepted: " .. explain(accepted)
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" and stalled.reason == "GateInconclusive" then
  -- Held for a person: a gate could not be measured (Argo Rollouts pauses the same way).
  hs.status = "Suspended"
  hs.message = explain(stalled)
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = explain(stalled)
  return hs
end

local phase = status.phase
if phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = say(phase)
  return hs
end

if phase == "Paused" or phase == "AwaitingApproval" or phase == "WaitingForWindow" then
  hs.status = "Suspended"
  hs.message = say(phase)
  return hs
end

if phase == nil or phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = say("Waiting for the Stagecoach operator")
  return hs
end

if phase == "EarlyLifeSupport" then
  hs.status = "Healthy"
  hs.message = "Deployed: " .. say("in early life support")
  return hs
end

if phase == "Succeeded" or phase == "Superseded" then
  hs.status = "Healthy"
  hs.message = say(phase)
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown release phase " .. tostring(phase)
return hs
