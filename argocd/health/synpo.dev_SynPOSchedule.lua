-- Argo CD health check for synpo.dev/v1alpha1 SynPOSchedule.
-- Install: argocd-cm key resource.customizations.health.synpo.dev_SynPOSchedule (see ../argocd-cm-patch.yaml).
--   Progressing no status yet, status.observedGeneration < metadata.generation, Ready condition Unknown
--   Suspended   spec.suspend == true
--   Degraded    Ready condition False (message from it)
--   Healthy     Ready condition True (or no Ready condition once the spec has been observed)
-- The health of the runs a schedule creates is reported on each SynPORun, not here.
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
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the SynPO operator to observe the schedule"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the SynPO operator to observe generation " .. tostring(generation) ..
    " (observed: " .. tostring(status.observedGeneration or "none") .. ")"
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Schedule suspended (spec.suspend): no new runs are created"
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready, "Schedule not ready")
  return hs
end
if ready ~= nil and ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Schedule readiness unknown")
  return hs
end

hs.status = "Healthy"
local active = 0
if status.active ~= nil then
  active = #status.active
end
local parts = { tostring(active) .. " active run(s)" }
if status.lastScheduleTime ~= nil then
  table.insert(parts, "last scheduled " .. status.lastScheduleTime)
end
if status.promoted ~= nil and status.promoted.run ~= nil then
  table.insert(parts, "promoted model from " .. status.promoted.run)
end
hs.message = table.concat(parts, "; ")
return hs
