"""Per-command cost of KVStore.apply_batch at the bench's shape (1400-command batches, 100k keys,
4 clients), with the server's GC settings, with and without results (leader / follower)."""
import gc, random, sys, time
from daemon.core.kv import KVStore
from daemon.core.messages import OP_PUT
rng = random.Random(1)
keys = [b"k%d" % i for i in range(100_000)]
value = b"x" * 64
def batches(n, size, seq0):
    out = []
    seq = seq0
    for _ in range(n):
        b = []
        for _ in range(size):
            seq += 1
            b.append((1 + seq % 4, seq, OP_PUT, keys[rng.randrange(100_000)], value, None))
        out.append(tuple(b))
    return out
gc.freeze(); gc.set_threshold(10_000, 10, 10)
if "nogc" in sys.argv: gc.disable()
kv = KVStore(100_000)
warm = batches(100, 1400, 0)
for b in warm: kv.apply_batch(b)
for want in (False, True):
    bs = batches(200, 1400, 10**7 * (1 + want))
    t = time.process_time()
    for b in bs:
        kv.apply_batch(b, [] if want else None)
    dt = time.process_time() - t
    print(f"results={want}: {dt / (200 * 1400) * 1e6:.3f} us per command")
