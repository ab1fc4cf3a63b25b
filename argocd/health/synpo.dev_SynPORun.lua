-- Argo CD health check for synpo.dev/v1alpha1 SynPORun.
-- Install: argocd-cm key resource.customizations.health.synpo.dev_SynPORun (see ../argocd-cm-patch.yaml).
--   Healthy     status.phase == Succeeded
--   Progressing no status yet, status.observedGeneration < metadata.generation, Pending, Running
--   Degraded    Failed (message from the Failed condition, else Ready); Pending or Running with a stage stuck
--               (StageStuck True: pods refused, unschedulable, image pull or config errors; its reason and
--               message), except WaitingForResources (other pods must finish first: Progressing)
--   Suspended   Suspended
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  elseif message ~= "" then
    return message
  elseif reason ~= "" then
    return reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the SynPO operator to observe the run"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the SynPO operator to observe generation " .. tostring(generation) ..
    " (observed: " .. tostring(status.observedGeneration or "none") .. ")"
  return hs
end

local phase = status.phase
local total = obj.spec and obj.spec.iterations
local where = ""
if status.iteration ~= nil then
  where = "iteration " .. tostring(status.iteration)
  if total ~= nil then
    where = where .. "/" .. tostring(total)
  end
end
if status.stage ~= nil and status.stage ~= "" then
  if where ~= "" then
    where = where .. ", "
  end
  where = where .. "stage " .. status.stage
end

local stuck = condition(status, "StageStuck")
if (phase == "Pending" or phase == "Running") and stuck ~= nil and stuck.status == "True" then
  if stuck.reason == "WaitingForResources" then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = "Stage stuck: " .. describe(stuck, "a stage's pods cannot start")
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(condition(status, "Succeeded"), "Run succeeded")
  if status.latestWinRate ~= nil then
    hs.message = hs.message .. " (win rate " .. tostring(status.latestWinRate) .. ")"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  local failed = condition(status, "Failed")
  if failed == nil or failed.status ~= "True" then
    failed = condition(status, "Ready")
  end
  hs.message = describe(failed, "Run failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(condition(status, "Suspended"), "Run suspended (spec.suspend)")
elseif phase == "Pending" then
  hs.status = "Progressing"
  hs.message = describe(condition(status, "Ready"), "Pending")
else
  -- Running, or a phase this check does not know yet
  hs.status = "Progressing"
  if where ~= "" then
    hs.message = phase .. ": " .. where
  else
    hs.message = describe(condition(status, "Ready"), phase)
  end
end
return hs
