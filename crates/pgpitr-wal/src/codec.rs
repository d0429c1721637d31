//! The archive object codec: a standard zstd frame with content checksum, wrapped in a
//! standard age file when encryption is on, so `age -d -i KEY F | zstd -d` gives back the
//! original bytes without pgpitr. The sha256 of the original is computed while streaming.

use crate::{Result, WalError};
use pgpitr_config::{Compression, EncryptionConfig};
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

/// How objects are written: compression and, optionally, age recipients.
pub struct Encoder {
    compression: Compression,
    level: i32,
    recipients: Vec<age::x25519::Recipient>,
    zstd_workers: u32,
}

/// What one encode pass measured.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub sha256: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

/// Object name suffix for a compression/encryption combination.
pub fn object_suffix(compression: Compression, encrypted: bool) -> &'static str {
    match (compression, encrypted) {
        (Compression::Zstd, false) => ".zst",
        (Compression::Zstd, true) => ".zst.age",
        (Compression::None, false) => "",
        (Compression::None, true) => ".age",
    }
}

impl Encoder {
    pub fn new(
        compression: Compression,
        level: i32,
        encryption: Option<&EncryptionConfig>,
    ) -> Result<Encoder> {
        let recipients = match encryption {
            None => Vec::new(),
            Some(enc) => enc
                .recipients
                .iter()
                .map(|r| {
                    age::x25519::Recipient::from_str(r).map_err(|e| {
                        WalError::Crypto(format!("recipient {r:?} is not a valid age key: {e}"))
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok(Encoder {
            compression,
            level,
            recipients,
            zstd_workers: 2,
        })
    }

    /// zstd worker threads per object (default 2: one segment on the PostgreSQL critical path
    /// compresses in about half the time). 0 compresses in the calling thread, for callers
    /// that already run one object per core (look-ahead archiving).
    pub fn with_zstd_workers(mut self, workers: u32) -> Encoder {
        self.zstd_workers = workers;
        self
    }

    pub fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }

    pub fn suffix(&self) -> &'static str {
        object_suffix(self.compression, self.encrypted())
    }

    /// Streams `input` into `out`, returning the original's sha256 and sizes.
    pub fn encode<R: Read, W: Write>(&self, input: R, out: W) -> Result<Encoded> {
        let counted = CountingWriter::new(out);
        let mut hashing = HashingReader::new(input);
        let counted = if self.encrypted() {
            let recips = self.recipients.iter().map(|r| r as &dyn age::Recipient);
            let enc = age::Encryptor::with_recipients(recips)
                .map_err(|e| WalError::Crypto(e.to_string()))?;
            let mut w = enc
                .wrap_output(counted)
                .map_err(|e| WalError::io("age header", e))?;
            self.compress(&mut hashing, &mut w)?;
            w.finish().map_err(|e| WalError::io("age finish", e))?
        } else {
            let mut counted = counted;
            self.compress(&mut hashing, &mut counted)?;
            counted
        };
        let (raw_bytes, sha256) = hashing.finish();
        Ok(Encoded {
            sha256,
            raw_bytes,
            stored_bytes: counted.count,
        })
    }

    fn compress<R: Read, W: Write>(&self, input: &mut R, out: &mut W) -> Result<()> {
        match self.compression {
            Compression::Zstd => {
                let mut z = zstd::stream::write::Encoder::new(out, self.level)
                    .map_err(|e| WalError::io("zstd init", e))?;
                z.include_checksum(true)
                    .map_err(|e| WalError::io("zstd init", e))?;
                // Workers split one segment; the output is still one standard zstd frame.
                if self.zstd_workers > 0 {
                    z.multithread(self.zstd_workers)
                        .map_err(|e| WalError::io("zstd init", e))?;
                }
                copy_big(input, &mut z).map_err(|e| WalError::io("compress", e))?;
                z.finish().map_err(|e| WalError::io("compress", e))?;
            }
            Compression::None => {
                copy_big(input, out).map_err(|e| WalError::io("copy", e))?;
            }
        }
        Ok(())
    }
}

/// Reads objects: knows the age identities (if any) to decrypt with.
pub struct Decoder {
    identities: Vec<age::x25519::Identity>,
}

impl Decoder {
    /// A decoder for unencrypted archives.
    pub fn plain() -> Decoder {
        Decoder {
            identities: Vec::new(),
        }
    }

    /// Loads age identities from `identity_file` (read in place; never logged).
    pub fn from_config(encryption: Option<&EncryptionConfig>) -> Result<Decoder> {
        let Some(path) = encryption.and_then(|e| e.identity_file.as_deref()) else {
            return Ok(Decoder::plain());
        };
        Self::from_identity_file(path)
    }

    /// Reads X25519 identities (`AGE-SECRET-KEY-1...` lines, as `age-keygen` writes them).
    /// Errors name the file and line, never the content.
    pub fn from_identity_file(path: &Path) -> Result<Decoder> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            WalError::Crypto(format!(
                "cannot read age identity file {}: {e}",
                path.display()
            ))
        })?;
        let mut identities = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| {
                WalError::Crypto(format!(
                    "age identity file {} line {}: not an X25519 identity (AGE-SECRET-KEY-1...)",
                    path.display(),
                    i + 1
                ))
            })?;
            identities.push(id);
        }
        if identities.is_empty() {
            return Err(WalError::Crypto(format!(
                "age identity file {} holds no identity",
                path.display()
            )));
        }
        Ok(Decoder { identities })
    }

    /// Decodes an object whose name ends in `suffix` into `out`; returns (sha256, bytes).
    pub fn decode<R: Read, W: Write>(
        &self,
        suffix: &str,
        input: R,
        out: W,
    ) -> Result<(String, u64)> {
        let (sha, n) = self.decode_checked(suffix, input, out, Check::Sha256)?;
        Ok((sha.expect("Check::Sha256 always hashes"), n))
    }

    /// Decodes like `decode`, checking the bytes the cheapest sound way `check` allows:
    /// with `Check::Frame`, a zstd frame that carries its content checksum is verified by
    /// libzstd itself (XXH64 of every decoded byte, compared at the end of the frame; an
    /// encrypted object is also authenticated chunk by chunk by age) and no sha256 is
    /// computed (`None`). Anything else (an uncompressed object, a frame written without
    /// the checksum flag) is hashed. Returns (sha256 if computed, bytes).
    pub fn decode_checked<R: Read, W: Write>(
        &self,
        suffix: &str,
        input: R,
        out: W,
        check: Check,
    ) -> Result<(Option<String>, u64)> {
        let encrypted = suffix.ends_with(".age");
        let compressed = suffix.starts_with(".zst");
        let input = BufReader::with_capacity(BIG_BUF, input);
        let plain: Box<dyn Read + '_> = if encrypted {
            if self.identities.is_empty() {
                return Err(WalError::Crypto(
                    "object is encrypted but no identity_file is configured in [encryption]".into(),
                ));
            }
            let d = age::Decryptor::new(input).map_err(|e| WalError::Crypto(e.to_string()))?;
            let r = d
                .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
                .map_err(|e| WalError::Crypto(format!("cannot decrypt: {e}")))?;
            Box::new(r)
        } else {
            Box::new(input)
        };
        let mut plain = BufReader::with_capacity(BIG_BUF, plain);
        let trust_frame = compressed
            && check == Check::Frame
            && frame_has_checksum(plain.fill_buf().map_err(|e| WalError::io("read", e))?);
        let mut out = HashingWriter::new(out, !trust_frame);
        if compressed {
            let mut z = zstd::stream::read::Decoder::with_buffer(plain)
                .map_err(|e| WalError::io("zstd init", e))?;
            copy_big(&mut z, &mut out).map_err(|e| WalError::io("decompress", e))?;
        } else {
            copy_big(&mut plain, &mut out).map_err(|e| WalError::io("read", e))?;
        }
        let (sha, n) = out.finish();
        Ok((if trust_frame { None } else { Some(sha) }, n))
    }
}

/// How a decode checks what it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// sha256 of the decoded bytes, for comparison with the one in the object's name.
    Sha256,
    /// The zstd frame's own content checksum when it has one, sha256 otherwise.
    Frame,
}

/// Whether `head` starts a zstd frame whose header sets Content_Checksum_flag (RFC 8878
/// 3.1.1.1.1: bit 2 of the Frame_Header_Descriptor after the 4-byte magic).
fn frame_has_checksum(head: &[u8]) -> bool {
    head.len() >= 5 && head[..4] == [0x28, 0xB5, 0x2F, 0xFD] && head[4] & 0x04 != 0
}

/// sha256 of a whole reader, hex-encoded, with its length.
pub fn sha256_reader<R: Read>(r: R) -> io::Result<(String, u64)> {
    let mut w = HashingWriter::new(io::sink(), true);
    let mut r = r;
    copy_big(&mut r, &mut w)?;
    Ok(w.finish())
}

/// I/O chunk of the hot path: a few large reads and writes per 16 MiB segment instead of
/// thousands of 8 KiB ones (std's `io::copy` buffer), and sha256 runs over long runs.
pub const BIG_BUF: usize = 1 << 20;

/// `io::copy` with a 1 MiB heap buffer.
pub fn copy_big<R: Read + ?Sized, W: Write + ?Sized>(r: &mut R, w: &mut W) -> io::Result<u64> {
    let mut buf = vec![0u8; BIG_BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }
    fn finish(self) -> (u64, String) {
        (self.n, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// Hashes everything written through it (when `hash`), and counts it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Option<Sha256>,
    n: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, hash: bool) -> Self {
        HashingWriter {
            inner,
            hasher: hash.then(Sha256::new),
            n: 0,
        }
    }
    /// (hex sha256, or empty when not hashing; bytes written)
    pub fn finish(self) -> (String, u64) {
        let sha = self.hasher.map(|h| hex::encode(h.finalize()));
        (sha.unwrap_or_default(), self.n)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W> CountingWriter<W> {
    fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn roundtrip(compression: Compression, enc: Option<&EncryptionConfig>, dec: &Decoder) {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let e = Encoder::new(compression, 3, enc).unwrap();
        let mut obj = Vec::new();
        let m = e.encode(&data[..], &mut obj).unwrap();
        assert_eq!(m.raw_bytes, data.len() as u64);
        assert_eq!(m.stored_bytes, obj.len() as u64);
        let mut back = Vec::new();
        let (sha, n) = dec.decode(e.suffix(), &obj[..], &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(sha, m.sha256);
        assert_eq!(n, data.len() as u64);
    }

    #[test]
    fn zstd_and_plain_roundtrip() {
        roundtrip(Compression::Zstd, None, &Decoder::plain());
        roundtrip(Compression::None, None, &Decoder::plain());
    }

    #[test]
    fn age_roundtrip_and_wrong_key() {
        let id = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
        let enc = EncryptionConfig {
            recipients: vec![id.to_public().to_string()],
            identity_file: Some(key.clone()),
        };
        let dec = Decoder::from_identity_file(&key).unwrap();
        roundtrip(Compression::Zstd, Some(&enc), &dec);
        roundtrip(Compression::None, Some(&enc), &dec);

        let other = age::x25519::Identity::generate();
        let key2 = dir.path().join("other.txt");
        std::fs::write(&key2, format!("{}\n", other.to_string().expose_secret())).unwrap();
        let e = Encoder::new(Compression::Zstd, 3, Some(&enc)).unwrap();
        let mut obj = Vec::new();
        e.encode(&b"hello"[..], &mut obj).unwrap();
        let err = Decoder::from_identity_file(&key2)
            .unwrap()
            .decode(".zst.age", &obj[..], Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("decrypt"), "{err}");
        assert!(!err.contains("AGE-SECRET-KEY"), "{err}");
    }

    #[test]
    fn frame_check_skips_sha256_only_when_the_frame_carries_its_checksum() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let e = Encoder::new(Compression::Zstd, 1, None).unwrap();
        let mut obj = Vec::new();
        let m = e.encode(&data[..], &mut obj).unwrap();
        let dec = Decoder::plain();
        let mut back = Vec::new();
        let (sha, n) = dec
            .decode_checked(".zst", &obj[..], &mut back, Check::Frame)
            .unwrap();
        assert_eq!((sha, n, &back), (None, data.len() as u64, &data));
        // Check::Sha256 always hashes.
        let (sha, _) = dec
            .decode_checked(".zst", &obj[..], Vec::new(), Check::Sha256)
            .unwrap();
        assert_eq!(sha.as_deref(), Some(m.sha256.as_str()));

        // libzstd compares the checksum: a wrong one, or a frame cut short, is an error.
        let mut bad = obj.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        let err = dec
            .decode_checked(".zst", &bad[..], Vec::new(), Check::Frame)
            .unwrap_err();
        assert!(err.to_string().contains("decompress"), "{err}");
        let err = dec
            .decode_checked(".zst", &obj[..obj.len() - 3], Vec::new(), Check::Frame)
            .unwrap_err();
        assert!(err.to_string().contains("decompress"), "{err}");

        // A frame written without the checksum flag is hashed instead.
        let bare = zstd::stream::encode_all(&data[..], 1).unwrap();
        assert!(!frame_has_checksum(&bare));
        let (sha, _) = dec
            .decode_checked(".zst", &bare[..], Vec::new(), Check::Frame)
            .unwrap();
        assert_eq!(sha.as_deref(), Some(m.sha256.as_str()));
        // So is an uncompressed object.
        let (sha, _) = dec
            .decode_checked(".plain", &data[..], Vec::new(), Check::Frame)
            .unwrap();
        assert_eq!(sha.as_deref(), Some(m.sha256.as_str()));
    }
}
