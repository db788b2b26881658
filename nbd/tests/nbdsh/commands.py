# Run by nbd/tests/clients.rs as `nbdsh -u URI -c "exec(open(PATH).read())"`: `h` is a libnbd
# handle connected to the server under test. EXPECT (set by the test before this file) says
# what the device does natively. Every command and error case, checked with libnbd's own
# checks switched off where the server's must answer.
import errno
import os

def expect_error(code, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == code, "%s: %s, expected %s" % (f.__name__, e, errno.errorcode[code])
        return
    raise AssertionError("%s%r succeeded; expected %s" % (f.__name__, args, errno.errorcode[code]))

bs = h.get_block_size(nbd.SIZE_MINIMUM)
assert bs == EXPECT["block"], bs
assert h.get_block_size(nbd.SIZE_PREFERRED) == max(bs, 4096)
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
size = h.get_size()
assert size == EXPECT["size"], size
assert h.get_structured_replies_negotiated()
for cap in ("can_flush", "can_fua", "can_zero", "can_fast_zero", "can_multi_conn", "can_df"):
    assert getattr(h, cap)(), cap
assert h.can_trim() == EXPECT["trim"], h.can_trim()
assert not h.is_read_only()

# Round trips, small and across many 128 KiB pieces; with FUA too.
data = os.urandom(64 << 10)
h.pwrite(data, 4096)
assert h.pread(len(data), 4096) == data
big = os.urandom((2 << 20) + 4096)
h.pwrite(big, 3 << 20)
assert h.pread(len(big), 3 << 20) == big
h.pwrite(data[:4096], 1 << 20, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 1 << 20) == data[:4096]
assert h.pread(bs, size - bs) is not None  # the last block

# Write zeroes, both ways, and exactly the range.
h.pwrite(data, 4096)
h.zero(8192, 8192)
h.zero(4096, 24576, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
back = h.pread(len(data), 4096)
assert back[:4096] == data[:4096]
assert back[4096:12288] == bytes(8192)
assert back[12288:20480] == data[12288:20480]
assert back[20480:24576] == bytes(4096)
assert back[24576:] == data[24576:]
# A fast zero is done, or refused at once with nothing written. EXPECT None: either (a file
# system may lack fallocate's zeroing).
h.pwrite(data[:4096], 4096)
try:
    h.zero(4096, 4096, nbd.CMD_FLAG_FAST_ZERO)
    fast = True
except nbd.Error as e:
    assert e.errnum == errno.ENOTSUP, e
    fast = False
assert EXPECT["fast_zero"] in (None, fast), "fast zero: %s" % fast
assert h.pread(4096, 4096) == (bytes(4096) if fast else data[:4096])

# Trim where offered; reads back zeroes where the device says so.
if EXPECT["trim"]:
    h.pwrite(data, 1 << 21)
    h.trim(len(data), 1 << 21)
    if EXPECT["trim_zeroes"]:
        assert h.pread(len(data), 1 << 21) == bytes(len(data))
h.flush()

# What the server itself must refuse (libnbd's client-side checks off).
h.set_strict_mode(0)
expect_error(errno.EINVAL, h.pread, bs, size)
expect_error(errno.EINVAL, h.pread, 2 * bs, size - bs)
expect_error(errno.ENOSPC, h.pwrite, b"x" * bs, size)
expect_error(errno.ENOSPC, h.zero, bs, size)
if bs > 1:
    expect_error(errno.EINVAL, h.pread, bs, 1)
    expect_error(errno.EINVAL, h.pwrite, b"y" * (bs + 1), 0)
# Larger than the maximum payload: refused up front (structured replies: EOVERFLOW).
expect_error(errno.EOVERFLOW, h.pread, (32 << 20) + bs, 0)
if not EXPECT["trim"]:
    expect_error(errno.EINVAL, h.trim, bs, 0)
# Still serving after all of that.
h.pwrite(data, 0)
assert h.pread(len(data), 0) == data
print("nbdsh: ok")
