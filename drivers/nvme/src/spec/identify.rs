//! Identify Controller and Identify Namespace data structures (4 KiB each).

/// The fields of Identify Controller (CNS 01h) this project uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyController {
    /// PCI vendor ID.
    pub vid: u16,
    /// PCI subsystem vendor ID.
    pub ssvid: u16,
    /// Serial number.
    pub sn: String,
    /// Model number.
    pub mn: String,
    /// Firmware revision.
    pub fr: String,
    /// Maximum data transfer size, as a power of two of the minimum page size (0: no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version (same encoding as the VS register).
    pub ver: u32,
    /// Optional admin command support.
    pub oacs: u16,
    /// Abort command limit (0-based).
    pub acl: u8,
    /// Error log page entries (0-based).
    pub elpe: u8,
    /// Submission queue entry sizes (required: low nibble; maximum: high nibble; log2).
    pub sqes: u8,
    /// Completion queue entry sizes.
    pub cqes: u8,
    /// Number of namespaces (highest valid NSID).
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    /// Volatile write cache present (bit 0).
    pub vwc: u8,
    /// SGL support.
    pub sgls: u32,
}

impl IdentifyController {
    /// OACS bit: Doorbell Buffer Config supported.
    pub const OACS_DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
    /// ONCS bit: Dataset Management supported.
    pub const ONCS_DSM: u16 = 1 << 2;
    /// ONCS bit: Write Zeroes supported.
    pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

    /// Parses the 4096-byte data structure.
    pub fn parse(b: &[u8]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let text =
            |o: usize, n: usize| String::from_utf8_lossy(&b[o..o + n]).trim_end().to_string();
        Self {
            vid: u16_at(0),
            ssvid: u16_at(2),
            sn: text(4, 20),
            mn: text(24, 40),
            fr: text(64, 8),
            mdts: b[77],
            cntlid: u16_at(78),
            ver: u32_at(80),
            oacs: u16_at(256),
            acl: b[258],
            elpe: b[262],
            sqes: b[512],
            cqes: b[513],
            nn: u32_at(516),
            oncs: u16_at(520),
            vwc: b[525],
            sgls: u32_at(536),
        }
    }

    /// Writes these fields into a 4096-byte structure (the model answers Identify with it).
    pub fn write_to(&self, b: &mut [u8]) {
        let put_text = |b: &mut [u8], o: usize, n: usize, s: &str| {
            let field = &mut b[o..o + n];
            field.fill(b' ');
            let s = s.as_bytes();
            field[..s.len().min(n)].copy_from_slice(&s[..s.len().min(n)]);
        };
        b[0..2].copy_from_slice(&self.vid.to_le_bytes());
        b[2..4].copy_from_slice(&self.ssvid.to_le_bytes());
        put_text(b, 4, 20, &self.sn);
        put_text(b, 24, 40, &self.mn);
        put_text(b, 64, 8, &self.fr);
        b[77] = self.mdts;
        b[78..80].copy_from_slice(&self.cntlid.to_le_bytes());
        b[80..84].copy_from_slice(&self.ver.to_le_bytes());
        b[256..258].copy_from_slice(&self.oacs.to_le_bytes());
        b[258] = self.acl;
        b[262] = self.elpe;
        b[512] = self.sqes;
        b[513] = self.cqes;
        b[516..520].copy_from_slice(&self.nn.to_le_bytes());
        b[520..522].copy_from_slice(&self.oncs.to_le_bytes());
        b[525] = self.vwc;
        b[536..540].copy_from_slice(&self.sgls.to_le_bytes());
    }

    /// Largest transfer in bytes for a controller page size of `page` (None: no limit).
    pub fn max_transfer(&self, page: usize) -> Option<usize> {
        (self.mdts != 0).then(|| page << self.mdts)
    }

    /// Whether the controller supports SGLs for NVM commands (SGLS bits 1:0 are 01b, any
    /// alignment, or 10b, dword alignment; 11b is reserved).
    pub fn supports_sgl(&self) -> bool {
        matches!(self.sgls & 3, 1 | 2)
    }
}

/// An LBA format: data size and metadata size.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// LBA data size as a power of two.
    pub lbads: u8,
    /// Relative performance (0 best).
    pub rp: u8,
}

/// The fields of Identify Namespace (CNS 00h) this project uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    /// Namespace capacity in logical blocks.
    pub ncap: u64,
    /// Namespace utilization in logical blocks.
    pub nuse: u64,
    /// Namespace features.
    pub nsfeat: u8,
    /// Number of LBA formats (0-based).
    pub nlbaf: u8,
    /// Formatted LBA size: the index of the format in use (bits 0-3).
    pub flbas: u8,
    /// Deallocate logical block features: bits 0-2 = 1 when deallocated blocks read as
    /// zeroes; bit 3 when Write Zeroes may deallocate (its DEAC bit).
    pub dlfeat: u8,
    /// The LBA formats.
    pub lbaf: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    /// DLFEAT: deallocated blocks read as zeroes.
    pub const DLFEAT_READS_ZEROES: u8 = 1;
    /// DLFEAT: Write Zeroes may deallocate (DEAC).
    pub const DLFEAT_WRITE_ZEROES_DEAC: u8 = 1 << 3;
}

impl IdentifyNamespace {
    /// Parses the 4096-byte data structure.
    pub fn parse(b: &[u8]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let nlbaf = b[25];
        let lbaf = (0..=usize::from(nlbaf.min(63)))
            .map(|i| {
                let o = 128 + 4 * i;
                LbaFormat {
                    ms: u16::from_le_bytes([b[o], b[o + 1]]),
                    lbads: b[o + 2],
                    rp: b[o + 3] & 3,
                }
            })
            .collect();
        Self {
            nsze: u64_at(0),
            ncap: u64_at(8),
            nuse: u64_at(16),
            nsfeat: b[24],
            nlbaf,
            flbas: b[26],
            dlfeat: b[33],
            lbaf,
        }
    }

    /// Writes these fields into a 4096-byte structure.
    pub fn write_to(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.nsze.to_le_bytes());
        b[8..16].copy_from_slice(&self.ncap.to_le_bytes());
        b[16..24].copy_from_slice(&self.nuse.to_le_bytes());
        b[24] = self.nsfeat;
        b[25] = self.nlbaf;
        b[26] = self.flbas;
        b[33] = self.dlfeat;
        for (i, f) in self.lbaf.iter().enumerate().take(64) {
            let o = 128 + 4 * i;
            b[o..o + 2].copy_from_slice(&f.ms.to_le_bytes());
            b[o + 2] = f.lbads;
            b[o + 3] = f.rp;
        }
    }

    /// The LBA format in use.
    pub fn format(&self) -> Option<LbaFormat> {
        self.lbaf.get(usize::from(self.flbas & 0xf)).copied()
    }

    /// Logical block size in bytes (0 if the format is invalid).
    pub fn block_size(&self) -> u32 {
        self.format().filter(|f| (9..=16).contains(&f.lbads)).map_or(0, |f| 1 << f.lbads)
    }
}
