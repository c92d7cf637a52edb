"""MULTI/EXEC through redis-py's default pipeline (transaction=True) against
a spendb on the port given. Exits non-zero with the reason on any mismatch."""
import sys

import redis

r = redis.Redis(port=int(sys.argv[1]), decode_responses=True)


def fields(reply):
    # A map in RESP3 (redis-py's default from 8.0), a flat array in RESP2.
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2]))


r.execute_command("BUDGET.SET", "org:py", "TOKENS", "1000", "PER", "DAY")

# The default pipeline is a transaction: MULTI, the commands, EXEC.
pipe = r.pipeline()
for hold in ("py1", "py2", "py3"):
    pipe.execute_command("RESERVE", hold, "org:py", "gpt-4o", "INPUT", "400", "OUTPUT", "0")
pipe.execute_command("BALANCE", "org:py")
replies = pipe.execute()
statuses = [fields(x)["status"] for x in replies[:3]]
assert statuses == ["granted", "granted", "denied"], statuses
held = fields(fields(replies[3])["held"])["tokens"]
assert held == 800, replies[3]

# An error while queuing discards the whole transaction.
pipe = r.pipeline()
pipe.execute_command("RESERVE", "py4", "org:py", "gpt-4o", "INPUT", "10", "OUTPUT", "0")
pipe.execute_command("RESERVE", "py5", "org:py", "gpt-4o", "INPUT", "ten")
try:
    pipe.execute()
    raise AssertionError("a queuing error must abort EXEC")
except redis.exceptions.ResponseError as e:
    assert "EXECABORT" in str(e) or "INPUT" in str(e), e
try:
    r.execute_command("HOLD.GET", "py4")
    raise AssertionError("py4 must not exist: its transaction was discarded")
except redis.exceptions.ResponseError as e:
    assert str(e).startswith("UNKNOWN"), e

# A pipeline without a transaction still works, and WATCH says why not.
pipe = r.pipeline(transaction=False)
pipe.execute_command("COMMIT", "py1", "INPUT", "400", "OUTPUT", "10")
pipe.execute_command("RELEASE", "py2")
done = pipe.execute()
assert [fields(x)["status"] for x in done] == ["committed", "released"], done
try:
    r.execute_command("WATCH", "org:py")
    raise AssertionError("WATCH must be refused")
except redis.exceptions.ResponseError as e:
    assert "WATCH is not supported" in str(e), e
print("redis-py transactions ok")
