"""A follower's per-command work at the peak, in one process: decode_accept of a 1400-command
Accept (64-byte values over 100k keys), the batch kept in the log, apply_batch; with the
server's GC settings. Prints process CPU per command and the time in collections."""
import gc, random, time
import fastpath
from daemon.codec import wire
from daemon.core.kv import KVStore
from daemon.core.messages import Accept, OP_PUT
rng = random.Random(1)
keys = [b"k%d" % i for i in range(100_000)]
seq = 0
def payload(slot):
    global seq
    b = []
    for _ in range(1400):
        seq += 1
        b.append((1 + seq % 4, seq, OP_PUT, keys[rng.randrange(100_000)], b"v" * 64, None))
    return fastpath.dumps(wire.encode_peer(Accept(1, fastpath.ballot_pack(1, 1), 0, slot, (tuple(b),), 0)))
payloads = [payload(s) for s in range(1, 401)]
gc.freeze(); gc.set_threshold(10_000, 10, 10)
gc_time = [0.0]; t0 = [0.0]
def cb(phase, info):
    if phase == "start": t0[0] = time.perf_counter()
    else: gc_time[0] += time.perf_counter() - t0[0]
gc.callbacks.append(cb)
kv = KVStore(100_000); log = {}
members = {1, 2, 3}
start = time.process_time()
for i, p in enumerate(payloads):
    f = fastpath.decode_accept(p, members)
    for j, batch in enumerate(f[4]):
        log[f[3] + j] = (f[1], batch)
        kv.apply_batch(batch)
dt = time.process_time() - start
n = 400 * 1400
print(f"{dt / n * 1e6:.3f} us per command, of which GC {gc_time[0] / n * 1e6:.3f} us")
