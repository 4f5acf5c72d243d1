-- wrk: GET users that exist (imported as imp-0 … imp-{BENCH_IDS-1} before the run).
local ids = tonumber(os.getenv("BENCH_IDS") or "20000")

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
end

function request()
  return wrk.format("GET", "/api/users/imp-" .. math.random(0, ids - 1))
end
