-- wrk: POST realistic records (tests/data/users.ndjson) with a fresh id on every request.
-- BENCH_BODIES names a file of one JSON record per line with __ID__ where the id goes.
local bodies = {}
local counter = 0
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  for line in io.lines(os.getenv("BENCH_BODIES")) do
    bodies[#bodies + 1] = line
  end
end

function request()
  counter = counter + 1
  local body = string.gsub(bodies[(counter % #bodies) + 1], "__ID__", "p" .. tid .. "-" .. counter, 1)
  return wrk.format("POST", "/api/users", { ["Content-Type"] = "application/json" }, body)
end
