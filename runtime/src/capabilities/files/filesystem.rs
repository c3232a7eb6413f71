//! `wasi:filesystem`, audited: wasmtime-wasi's implementation behind the
//! host-call choke point.
//!
//! The `files` capability preopens the granted directory for
//! `wasi:filesystem` users (Rust `std::fs`, other toolchains). Every call
//! into `wasi:filesystem/types` and `preopens` passes
//! [`HostCalls::begin`]/[`HostCalls::finish`] here before reaching
//! wasmtime-wasi, so each is its own audit record (paths and sizes, never
//! contents) and each is refused while the audit log cannot be written.
//! A stream opened here (`read-via-stream`, `write-via-stream`,
//! `append-via-stream`) is metered: its record stays open while the stream
//! lives and closes with the bytes that went through it (and, for writes,
//! their blake3), so a file written with `std::fs::write` is one record
//! saying how much was written and what. The stream calls themselves go
//! through `wasi:io/streams` and are counted per function like the rest of
//! the baseline.

use crate::call::Target;
use crate::host_call::InvocationState;
use crate::host_call::{Decision, HostCall, HostCalls};
use std::time::Instant;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, HostDescriptor, HostDirectoryEntryStream};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, InputStream, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::p2::{FsError, FsResult};

const TYPES: &str = "wasi:filesystem/types";

/// The accessor data: wasmtime-wasi's view plus the invocation's host calls.
pub struct AuditedFs<'a> {
    inner: WasiFilesystemCtxView<'a>,
    calls: HostCalls,
    /// Where each open descriptor points, relative to the granted
    /// directory, so approval rules on paths apply to `*-at` calls made
    /// through subdirectory descriptors too.
    paths: &'a mut DescriptorPaths,
}

/// Descriptor (table index) to its path relative to the granted directory.
///
/// Its own type, not a bare map: per-invocation slots are keyed by type
/// ([`crate::host_call::Slots`]), and a std type could be another
/// capability's slot too.
#[derive(Debug, Default)]
pub struct DescriptorPaths(std::collections::HashMap<u32, String>);

impl DescriptorPaths {
    fn get(&self, descriptor: &u32) -> Option<&String> {
        self.0.get(descriptor)
    }

    fn insert(&mut self, descriptor: u32, path: String) {
        self.0.insert(descriptor, path);
    }

    fn remove(&mut self, descriptor: &u32) {
        self.0.remove(descriptor);
    }
}

struct AuditedFilesystem;

impl HasData for AuditedFilesystem {
    type Data<'a> = AuditedFs<'a>;
}

/// Link `wasi:filesystem` with every call audited.
pub fn link(linker: &mut Linker<InvocationState>) -> wasmtime::Result<()> {
    types::add_to_linker::<InvocationState, AuditedFilesystem>(linker, audited_view)?;
    preopens::add_to_linker::<InvocationState, AuditedFilesystem>(linker, audited_view)?;
    Ok(())
}

fn audited_view(s: &mut InvocationState) -> AuditedFs<'_> {
    AuditedFs {
        calls: s.host_calls.clone(),
        inner: WasiFilesystemCtxView {
            ctx: s.wasi.filesystem(),
            table: &mut s.table,
        },
        paths: s.slots.get_or_default(),
    }
}

/// `base/path`, or `None` when the base descriptor's path is unknown.
fn join(base: Option<&String>, path: &str) -> Option<String> {
    base.map(|b| {
        if b.is_empty() {
            path.to_string()
        } else {
            format!("{b}/{path}")
        }
    })
}

impl AuditedFs<'_> {
    /// Open one audited call; `Err` when the audit log refuses it.
    fn begin(&self, call: HostCall) -> Result<(u64, Instant), FsError> {
        let (seq, allowed) = self.calls.begin(call, Decision::allow("grants.files"));
        match allowed {
            Ok(()) => Ok((seq, Instant::now())),
            Err(_) => Err(ErrorCode::NotPermitted.into()),
        }
    }

    /// [`AuditedFs::begin`] for a call an approval gate may hold: `write`
    /// (or read) of `path` under descriptor `fd`.
    async fn begin_gated(&mut self, call: HostCall) -> Result<(u64, Instant), FsError> {
        let (call, decision) = self.calls.admit(call, Decision::allow("grants.files")).await;
        let (seq, allowed) = self.calls.begin(call, decision);
        match allowed {
            Ok(()) => Ok((seq, Instant::now())),
            Err(_) => Err(ErrorCode::NotPermitted.into()),
        }
    }

    fn target(&self, fd: &Resource<types::Descriptor>, path: &str, write: bool) -> Target {
        Target::Files {
            write,
            path: join(self.paths.get(&fd.rep()), path),
        }
    }

    /// Where a symlink at `dest` (under `fd`) holding `src` points.
    fn link_target(&self, fd: &Resource<types::Descriptor>, dest: &str, src: &str) -> Target {
        let path = if src.starts_with('/') {
            None
        } else {
            join(self.paths.get(&fd.rep()), dest).map(|d| match d.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/{src}"),
                None => src.to_string(),
            })
        };
        Target::Files { write: true, path }
    }

    /// Put a stream just opened behind its meter, which closes the call's
    /// record when the stream is dropped; a failed open closes it now.
    fn metered<S: ?Sized + Send + 'static>(
        &mut self,
        token: (u64, Instant),
        opened: FsResult<Resource<Box<S>>>,
        wrap: impl FnOnce(Box<S>, Meter) -> Box<S>,
    ) -> FsResult<Resource<Box<S>>> {
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                let failed = Err(e);
                self.finish(token, &failed);
                return failed;
            }
        };
        let inner = match self.inner.table.delete(stream) {
            Ok(inner) => inner,
            Err(e) => {
                self.calls.finish(token.0, "error: trap", token.1.elapsed());
                return Err(FsError::trap(e));
            }
        };
        let meter = Meter {
            calls: self.calls.clone(),
            seq: token.0,
            started: token.1,
            bytes: 0,
            digest: blake3::Hasher::new(),
        };
        match self.inner.table.push(wrap(inner, meter)) {
            Ok(r) => Ok(r),
            Err(e) => Err(FsError::trap(e)),
        }
    }

    fn finish<T>(&self, (seq, started): (u64, Instant), result: &FsResult<T>) {
        let status = match result {
            Ok(_) => "ok".to_string(),
            Err(e) => match e.downcast_ref() {
                Some(code) => format!("error: {code:?}"),
                None => "error: trap".to_string(),
            },
        };
        self.calls.finish(seq, status, started.elapsed());
    }
}

/// One audited delegation: describe, begin, run, finish; with `gate:`,
/// the call first passes the approval gate for the given targets.
macro_rules! audited {
    ($self:ident, $function:literal, [$($key:literal => $value:expr),*], gate: [$($target:expr),+], $run:expr) => {{
        let call = HostCall::new(TYPES, $function)$(.arg($key, $value))*$(.target($target))+;
        let token = $self.begin_gated(call).await?;
        let result = $run;
        $self.finish(token, &result);
        result
    }};
    ($self:ident, $function:literal, [$($key:literal => $value:expr),*], $run:expr) => {{
        let token = $self.begin(HostCall::new(TYPES, $function)$(.arg($key, $value))*)?;
        let result = $run;
        $self.finish(token, &result);
        result
    }};
}

impl preopens::Host for AuditedFs<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<types::Descriptor>, String)>> {
        let (seq, allowed) = self.calls.begin(
            HostCall::new("wasi:filesystem/preopens", "get-directories"),
            Decision::allow("grants.files"),
        );
        if allowed.is_err() {
            // Without an audit log there is no directory to offer.
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let result = self.inner.get_directories();
        if let Ok(dirs) = &result {
            for (fd, _) in dirs {
                // The one preopen is the granted directory itself.
                self.paths.insert(fd.rep(), String::new());
            }
        }
        self.calls
            .finish(seq, if result.is_ok() { "ok" } else { "error" }, started.elapsed());
        result
    }
}

impl types::Host for AuditedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        self.inner.convert_error_code(err)
    }

    fn filesystem_error_code(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        self.inner.filesystem_error_code(err)
    }
}

impl HostDescriptor for AuditedFs<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.advise",
            [],
            self.inner.advise(fd, offset, len, advice).await
        )
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        audited!(self, "[method]descriptor.sync-data", [], self.inner.sync_data(fd).await)
    }

    async fn get_flags(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorFlags> {
        audited!(self, "[method]descriptor.get-flags", [], self.inner.get_flags(fd).await)
    }

    async fn get_type(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorType> {
        audited!(self, "[method]descriptor.get-type", [], self.inner.get_type(fd).await)
    }

    async fn set_size(&mut self, fd: Resource<types::Descriptor>, size: types::Filesize) -> FsResult<()> {
        audited!(self, "[method]descriptor.set-size", ["size" => size], self.inner.set_size(fd, size).await)
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.set-times",
            [],
            self.inner.set_times(fd, atim, mtim).await
        )
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        audited!(self, "[method]descriptor.read", ["len" => len, "offset" => offset], self.inner.read(fd, len, offset).await)
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        let bytes = buf.len();
        let digest = blake3::hash(&buf).to_hex();
        audited!(
            self,
            "[method]descriptor.write",
            ["bytes" => bytes, "offset" => offset, "blake3" => digest],
            self.inner.write(fd, buf, offset).await
        )
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        audited!(
            self,
            "[method]descriptor.read-directory",
            [],
            self.inner.read_directory(fd).await
        )
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        audited!(self, "[method]descriptor.sync", [], self.inner.sync(fd).await)
    }

    async fn create_directory_at(&mut self, fd: Resource<types::Descriptor>, path: String) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.create-directory-at",
            ["path" => &path],
            gate: [self.target(&fd, &path, true)],
            self.inner.create_directory_at(fd, path.clone()).await
        )
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorStat> {
        audited!(self, "[method]descriptor.stat", [], self.inner.stat(fd).await)
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        audited!(
            self,
            "[method]descriptor.stat-at",
            ["path" => &path],
            self.inner.stat_at(fd, path_flags, path.clone()).await
        )
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.set-times-at",
            ["path" => &path],
            gate: [self.target(&fd, &path, true)],
            self.inner.set_times_at(fd, path_flags, path.clone(), atim, mtim).await
        )
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.link-at",
            ["old-path" => &old_path, "new-path" => &new_path],
            // A hard link is a second way to write the source: both ends
            // are writes as far as the gates go.
            gate: [self.target(&fd, &old_path, true), self.target(&new_descriptor, &new_path, true)],
            self.inner
                .link_at(fd, old_path_flags, old_path.clone(), new_descriptor, new_path.clone())
                .await
        )
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        // Opening for writing (or creating, truncating) is the write as far
        // as the gates are concerned: what is written through the
        // descriptor later was approved with it.
        let write = oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE)
            || flags.intersects(types::DescriptorFlags::WRITE | types::DescriptorFlags::MUTATE_DIRECTORY);
        let target = self.target(&fd, &path, write);
        let opened_path = join(self.paths.get(&fd.rep()), &path);
        let opened = audited!(
            self,
            "[method]descriptor.open-at",
            ["path" => &path, "open-flags" => format!("{oflags:?}"), "flags" => format!("{flags:?}")],
            gate: [target],
            self.inner.open_at(fd, path_flags, path.clone(), oflags, flags).await
        );
        // Remember where the descriptor really points now, so re-pointing a
        // symlink later cannot move what it refers to for the gates.
        let resolved = opened_path.and_then(|p| match self.calls.gate() {
            Some(gate) => gate.resolve(&p),
            None => Some(p),
        });
        if let (Ok(new_fd), Some(p)) = (&opened, resolved) {
            self.paths.insert(new_fd.rep(), p);
        }
        opened
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        self.paths.remove(&fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<types::Descriptor>, path: String) -> FsResult<String> {
        audited!(
            self,
            "[method]descriptor.readlink-at",
            ["path" => &path],
            gate: [self.target(&fd, &path, false)],
            self.inner.readlink_at(fd, path.clone()).await
        )
    }

    async fn remove_directory_at(&mut self, fd: Resource<types::Descriptor>, path: String) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.remove-directory-at",
            ["path" => &path],
            gate: [self.target(&fd, &path, true)],
            self.inner.remove_directory_at(fd, path.clone()).await
        )
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.rename-at",
            ["old-path" => &old_path, "new-path" => &new_path],
            gate: [self.target(&fd, &old_path, true), self.target(&new_fd, &new_path, true)],
            self.inner.rename_at(fd, old_path.clone(), new_fd, new_path.clone()).await
        )
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.symlink-at",
            ["target" => &src_path, "path" => &dest_path],
            // Gated where the link is made and where it points.
            gate: [self.target(&fd, &dest_path, true), self.link_target(&fd, &dest_path, &src_path)],
            self.inner.symlink_at(fd, src_path.clone(), dest_path.clone()).await
        )
    }

    async fn unlink_file_at(&mut self, fd: Resource<types::Descriptor>, path: String) -> FsResult<()> {
        audited!(
            self,
            "[method]descriptor.unlink-file-at",
            ["path" => &path],
            gate: [self.target(&fd, &path, true)],
            self.inner.unlink_file_at(fd, path.clone()).await
        )
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        let call = HostCall::new(TYPES, "[method]descriptor.read-via-stream").arg("offset", offset);
        let token = self.begin(call)?;
        let opened = self.inner.read_via_stream(fd, offset);
        self.metered(token, opened, |inner, meter| Box::new(MeteredInput { inner, meter }))
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let call = HostCall::new(TYPES, "[method]descriptor.write-via-stream").arg("offset", offset);
        let token = self.begin(call)?;
        let opened = self.inner.write_via_stream(fd, offset);
        self.metered(token, opened, |inner, meter| Box::new(MeteredOutput { inner, meter }))
    }

    fn append_via_stream(&mut self, fd: Resource<types::Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let token = self.begin(HostCall::new(TYPES, "[method]descriptor.append-via-stream"))?;
        let opened = self.inner.append_via_stream(fd);
        self.metered(token, opened, |inner, meter| Box::new(MeteredOutput { inner, meter }))
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        // No error case in its WIT: a refusal (audit log unwritable) traps.
        let call = HostCall::new(TYPES, "[method]descriptor.is-same-object");
        let (seq, allowed) = self.calls.begin(call, Decision::allow("grants.files"));
        allowed.map_err(crate::host_call::Denied::into_trap)?;
        let started = Instant::now();
        let result = self.inner.is_same_object(a, b).await;
        let status = match &result {
            Ok(same) => format!("ok: {same}"),
            Err(_) => "error: trap".to_string(),
        };
        self.calls.finish(seq, status, started.elapsed());
        result
    }

    async fn metadata_hash(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::MetadataHashValue> {
        audited!(
            self,
            "[method]descriptor.metadata-hash",
            [],
            self.inner.metadata_hash(fd).await
        )
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        audited!(
            self,
            "[method]descriptor.metadata-hash-at",
            ["path" => &path],
            self.inner.metadata_hash_at(fd, path_flags, path.clone()).await
        )
    }
}

impl HostDirectoryEntryStream for AuditedFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        audited!(
            self,
            "[method]directory-entry-stream.read-directory-entry",
            [],
            self.inner.read_directory_entry(stream).await
        )
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

/// The tally of one metered stream; closes its host-call record when the
/// stream goes.
struct Meter {
    calls: HostCalls,
    seq: u64,
    started: Instant,
    bytes: u64,
    digest: blake3::Hasher,
}

impl Meter {
    fn count(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        self.digest.update(bytes);
    }
}

/// Reads are counted (their contents came from the granted directory, so
/// a digest would say nothing new); writes are counted and hashed.
struct MeteredInput {
    inner: DynInputStream,
    meter: Meter,
}

struct MeteredOutput {
    inner: DynOutputStream,
    meter: Meter,
}

impl Drop for MeteredInput {
    fn drop(&mut self) {
        let m = &self.meter;
        m.calls
            .finish(m.seq, format!("ok: {} bytes read", m.bytes), m.started.elapsed());
    }
}

impl Drop for MeteredOutput {
    fn drop(&mut self) {
        let m = &self.meter;
        let status = format!(
            "ok: {} bytes written (blake3:{})",
            m.bytes,
            m.digest.finalize().to_hex()
        );
        m.calls.finish(m.seq, status, m.started.elapsed());
    }
}

#[async_trait::async_trait]
impl Pollable for MeteredInput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl InputStream for MeteredInput {
    fn read(&mut self, size: usize) -> StreamResult<bytes::Bytes> {
        let data = self.inner.read(size)?;
        self.meter.bytes += data.len() as u64;
        Ok(data)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<bytes::Bytes> {
        let data = self.inner.blocking_read(size).await?;
        self.meter.bytes += data.len() as u64;
        Ok(data)
    }

    fn skip(&mut self, n: usize) -> StreamResult<usize> {
        self.inner.skip(n)
    }

    async fn blocking_skip(&mut self, n: usize) -> StreamResult<usize> {
        self.inner.blocking_skip(n).await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[async_trait::async_trait]
impl Pollable for MeteredOutput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[async_trait::async_trait]
impl OutputStream for MeteredOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.meter.count(&bytes);
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.meter.count(&bytes);
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, n: usize) -> StreamResult<()> {
        const ZEROES: [u8; 4096] = [0; 4096];
        let mut left = n;
        while left > 0 {
            let k = left.min(ZEROES.len());
            self.meter.count(&ZEROES[..k]);
            left -= k;
        }
        self.inner.write_zeroes(n)
    }

    async fn write_ready(&mut self) -> StreamResult<usize> {
        self.inner.write_ready().await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}
