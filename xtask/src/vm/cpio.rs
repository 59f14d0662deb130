//! A writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Writing the archive here (instead of staging a tree for `cpio`) lets it hold device nodes
//! such as `/dev/console` without `mknod` on the host, and needs no extra host tool.
use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFLNK: u32 = 0o120_000;

pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    offset: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_ino: 1, offset: 0 }
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), 0, &[])
    }

    /// A regular file. `mtime` (seconds since the epoch) matters to programs that compare
    /// timestamps, e.g. python's check that a cached `.pyc` matches its source.
    pub fn file(&mut self, name: &str, perm: u32, mtime: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), mtime, data)
    }

    /// A symbolic link to `target` (stored as the link's data, as newc does).
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), 0, target.as_bytes())
    }

    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), 0, &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, (0, 0), 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// `name` is relative to the archive root (no leading `/`).
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        mtime: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size =
            u32::try_from(data.len()).map_err(|_| io::Error::other(format!("{name}: too large for cpio")))?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let name_size = name.len() + 1;
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            mtime, // 0 except for copied host files: the archive is reproducible
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_size as u32,
            0, // check (unused by newc)
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    /// Pads to a 4-byte boundary (newc aligns both the name and the data).
    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - self.offset % 4) % 4;
        self.write(&[0u8; 3][..rem as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut w = Writer::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("/bin/x", 0o755, 0x1234, b"hello").unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.symlink("bin/sh", "dash").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // The header of `bin/x`: regular file 0755, 5 bytes of data.
        let x = text.find("bin/x\0").unwrap() - 110;
        assert_eq!(&text[x..x + 6], MAGIC);
        assert_eq!(&text[x + 6 + 8..x + 6 + 16], "000081ed");
        assert_eq!(&text[x + 6 + 5 * 8..x + 6 + 6 * 8], "00001234", "mtime");
        assert_eq!(&text[x + 6 + 6 * 8..x + 6 + 7 * 8], "00000005");
        assert!(text.contains("hello"));
        // The console is char device 5:1.
        let c = text.find("dev/console\0").unwrap() - 110;
        assert_eq!(&text[c + 6 + 9 * 8..c + 6 + 11 * 8], "0000000500000001");
        // The symlink: type 0120777, its target as data.
        let l = text.find("bin/sh\0").unwrap() - 110;
        assert_eq!(&text[l + 6 + 8..l + 6 + 16], "0000a1ff");
        assert!(text[l..].contains("dash"));
        assert!(text.contains(TRAILER));
    }
}
