"""Streaming acquisition: the board's sample ring buffer and the FETC:ADC? payload codec.

One module used by both sides: the board packs with ``pack_payload``; the host (and the tests)
unpack with ``unpack_payload``. MicroPython-compatible.

Payload of the ``FETC:ADC?`` block (all little-endian, ``HEADER_FMT``, 36 bytes)::

    offset size field
    0      4    magic        b"BSAQ"
    4      1    version      1
    5      1    header_size  36 (samples start here; a later version may append fields)
    6      2    flags        bit0 ring-buffer overflow since the previous fetch (samples lost:
                             first_index jumps), bit1 OVP trip latched, bit2 watchdog trip
                             latched, bit3 acquisition running
    8      4    seq          block sequence number (uint32, +1 per FETC:ADC?, wraps)
    12     8    first_index  sample index of the first sample (uint64; 0 = first after INIT)
    20     8    t_first_us   board time of the first sample in microseconds (uint64)
    28     4    period_us    sample period in microseconds
    32     4    count        number of samples that follow
    36     2*count           ADC codes, uint16 little-endian (12-bit, 0..4095)

Sample ``k`` of the block has index ``first_index + k`` and board time
``t_first_us + k * period_us``: time comes from the board's sample index, never from when the
host received the block.
"""

import struct
import sys
from array import array

MAGIC = b"BSAQ"
VERSION = 1
HEADER_FMT = "<4sBBHIQQII"
HEADER_SIZE = 36  # == struct.calcsize(HEADER_FMT)

FLAG_OVERFLOW = 1
FLAG_OVP = 2
FLAG_WDOG = 4
FLAG_RUNNING = 8

COUNT_MASK = 0x0FFFFFFF  # the producer's counter stays a small int (no allocation in an IRQ)


class SampleRing:
    """Single-producer single-consumer ring of uint16 samples with absolute sample indices.

    The producer (a hard timer IRQ on the board, the simulated clock in tests) only calls
    ``push``, which touches small ints and the preallocated array (no heap allocation). The
    consumer calls ``sync`` now and then (at least every 2**28 samples) and ``read``. When the
    producer laps the consumer the oldest samples are overwritten: ``read`` then reports an
    overflow and its first index jumps over the lost samples.
    """

    def __init__(self, size):
        if size < 1:
            raise ValueError("ring size must be >= 1")
        self.size = size
        self.buf = array("H", bytes(2 * size))
        self.reset()

    def reset(self):
        # Producer side (small ints only).
        self.pos = 0
        self.count = 0
        # Consumer side.
        self._seen = 0
        self.written = 0      # absolute index of the next sample to be written
        self.read_index = 0   # absolute index of the next sample to hand out
        self.overflow = False

    def push(self, code):
        p = self.pos
        self.buf[p] = code
        p += 1
        if p == self.size:
            p = 0
        self.pos = p
        self.count = (self.count + 1) & COUNT_MASK

    def sync(self):
        """Account for samples pushed since the last call; returns the absolute write index."""
        c = self.count
        self.written += (c - self._seen) & COUNT_MASK
        self._seen = c
        return self.written

    def available(self):
        w = self.sync()
        oldest = w - self.size if w > self.size else 0
        return w - (self.read_index if self.read_index > oldest else oldest)

    def read(self, max_count):
        """Take up to ``max_count`` oldest unread samples: (first_index, array('H'), overflow).

        ``overflow`` is True if samples were lost (overwritten) since the previous read.
        """
        w = self.sync()
        size = self.size
        r = self.read_index
        overflow = self.overflow
        if w - r > size:
            r = w - size
            overflow = True
        n = w - r
        if n > max_count:
            n = max_count
        out = array("H", bytes(2 * n))
        buf = self.buf
        start = r % size
        first = size - start
        if first >= n:
            out[0:n] = buf[start:start + n]
        else:
            out[0:first] = buf[start:size]
            out[first:n] = buf[0:n - first]
        # The producer may have overwritten the oldest of those while they were copied (a push
        # runs to completion in the IRQ, so index i is gone once index i + size is written).
        w2 = self.sync()
        lost = (w2 - size) - r
        if lost > 0 and n > 0:
            if lost > n:
                lost = n
            out = out[lost:]
            r += lost
            n -= lost
            overflow = True
        self.read_index = r + n
        self.overflow = False
        return r, out, overflow


def pack_payload(seq, first_index, t_first_us, period_us, flags, codes):
    """Board side: header + uint16 little-endian codes (``codes``: array('H') or a sequence)."""
    n = len(codes)
    head = struct.pack(HEADER_FMT, MAGIC, VERSION, HEADER_SIZE, flags & 0xFFFF,
                       seq & 0xFFFFFFFF, first_index, t_first_us, period_us, n)
    out = bytearray(head)
    if sys.byteorder == "little" and isinstance(codes, array):
        out.extend(bytes(codes))
    else:
        out.extend(struct.pack("<%dH" % n, *codes))
    return bytes(out)


def unpack_header(payload):
    """Host side: (seq, first_index, t_first_us, period_us, flags, count); ValueError if bad."""
    if len(payload) < HEADER_SIZE:
        raise ValueError("payload shorter than the acquisition header")
    magic, version, header_size, flags, seq, first, t_first, period, count = struct.unpack(
        HEADER_FMT, bytes(payload[:HEADER_SIZE]))
    if magic != MAGIC:
        raise ValueError("bad magic %r" % (magic,))
    if version != VERSION or header_size < HEADER_SIZE:
        raise ValueError("unsupported acquisition block version %d" % version)
    if len(payload) != header_size + 2 * count:
        raise ValueError("payload length %d does not match %d samples" % (len(payload), count))
    return seq, first, t_first, period, flags, count


def unpack_payload(payload):
    """Host side: (header tuple as ``unpack_header``, tuple of codes)."""
    header = unpack_header(payload)
    count = header[5]
    start = len(payload) - 2 * count
    codes = struct.unpack("<%dH" % count, bytes(payload[start:]))
    return header, codes


def code_to_volts(code, vref, full_scale, divider, gain=1.0, offset=0.0):
    """ADC code (or mean code; a numpy array works too) -> volts before the divider."""
    return (code * (vref / full_scale) * divider) * gain + offset
