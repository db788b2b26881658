# A read-only export: reads work, everything that writes fails with EPERM.
import errno
assert h.is_read_only()
assert not h.can_trim() and not h.can_zero() and not h.can_fua()
h.set_strict_mode(0)
assert len(h.pread(4096, 0)) == 4096
for f, args in ((h.pwrite, (b"x" * 4096, 0)), (h.zero, (4096, 0)), (h.trim, (4096, 0))):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, (f.__name__, e)
    else:
        raise AssertionError(f.__name__ + " wrote to a read-only export")
h.flush()
print("nbdsh read-only: ok")
