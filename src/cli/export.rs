//! `data-ingestion-api export`: every stored user as NDJSON, one document per line exactly as
//! `GET /api/users/{id}` serves it, read from the store directly, page by page.
//!
//! Streamed: one page of the store is in memory at a time, whatever the store holds. With
//! `--output` the lines go to a temporary file beside the target, renamed over it only once
//! the export is complete, so an export that fails or is interrupted never leaves a truncated
//! file that looks complete (nor destroys an earlier one).

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::{open_store, StoreArgs, EXIT_ERROR, EXIT_INTERRUPTED};
use crate::store::EXPORT_PAGE_SIZE;

pub const AFTER_HELP: &str = "\
Examples:
  data-ingestion-api export --output users.ndjson
  data-ingestion-api export --data-dir /var/lib/ingest | gzip > users.ndjson.gz
  INGEST_BACKEND=azure COSMOS_ENDPOINT=https://acct.documents.azure.com:443/ COSMOS_KEY=… \\
      data-ingestion-api export -o users.ndjson

Progress goes to stderr (a bar on a terminal, a line every few seconds otherwise), then a
summary line: `exported N users in X s`. Exit status: 0 done, 2 configuration, connection or
write error, 130 interrupted (with --output, FILE is then left as it was).";

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Write to FILE instead of stdout: through a temporary file beside it
    /// (`FILE.<pid>.partial`), renamed to FILE only when the export is complete.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// No progress display (the summary line is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Users per page read from the store (tests use small pages to exercise paging).
    #[arg(long, hide = true, default_value_t = EXPORT_PAGE_SIZE)]
    pub page_size: NonZeroU32,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// What an export did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub users: u64,
    pub elapsed: Duration,
}

pub fn main(args: ExportArgs) -> ExitCode {
    let Some(runtime) = super::runtime("export") else {
        return ExitCode::from(EXIT_ERROR);
    };
    let target = args.output.as_ref().map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(&args) => Some(result),
            // Dropping the export removes its temporary file: FILE is left as it was.
            () = crate::app::shutdown_signal() => None,
        }
    });
    match outcome {
        Some(Ok(summary)) => {
            let secs = summary.elapsed.as_secs_f64();
            eprintln!(
                "exported {} users in {secs:.2} s ({:.0} users/s) to {target}",
                summary.users,
                summary.users as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        // `export | head`: the reader has what it wanted; not an error (as `cat` and `grep` do).
        Some(Err(e))
            if args.output.is_none()
                && e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                }) =>
        {
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("export: {e:#}");
            if args.output.is_some() {
                eprintln!("export: {target} was not written");
            }
            ExitCode::from(EXIT_ERROR)
        }
        None => {
            eprintln!("export: interrupted");
            if args.output.is_some() {
                eprintln!("export: {target} was not written");
            }
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

/// Exports every stored user to `--output` or stdout.
pub async fn run(args: &ExportArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let store = open_store(&args.store).await?;
    let mut output = match &args.output {
        Some(path) => Output::File(PartialFile::create(path)?),
        None => Output::Stdout(BufWriter::with_capacity(256 * 1024, io::stdout())),
    };
    let total = store.export_total().await?;
    // A bar on the terminal that also shows the documents would garble both.
    let shares_terminal = args.output.is_none() && io::stdout().is_terminal();
    let progress = Progress::new(total, args.quiet, shares_terminal);
    let mut users = 0u64;
    let mut pages = store.export(args.page_size);
    while let Some(page) = pages.try_next().await.context("cannot read the store")? {
        for doc in &page {
            writeln!(output, "{doc}").context("cannot write the export")?;
        }
        users += page.len() as u64;
        progress.tick(users);
        // The embedded store reads inline: give Ctrl-C (raced against this in `main`) its turn.
        tokio::task::yield_now().await;
    }
    output.finish().context("cannot write the export")?;
    progress.finish(users);
    Ok(Summary { users, elapsed: started.elapsed() })
}

enum Output {
    Stdout(BufWriter<io::Stdout>),
    File(PartialFile),
}

impl Output {
    fn finish(self) -> io::Result<()> {
        match self {
            Self::Stdout(mut out) => out.flush(),
            Self::File(file) => file.commit(),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stdout(out) => out.write(buf),
            Self::File(file) => file.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(out) => out.flush(),
            Self::File(file) => file.flush(),
        }
    }
}

/// A file written under a temporary name beside its target and renamed over the target by
/// [`commit`](Self::commit); dropped uncommitted, it removes itself.
pub struct PartialFile {
    out: BufWriter<File>,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Beside the target, so the rename stays within one file system and is atomic.
    pub fn create(target: &Path) -> anyhow::Result<Self> {
        let name = target
            .file_name()
            .with_context(|| format!("--output {} does not name a file", target.display()))?;
        let mut temp_name = name.to_owned();
        temp_name.push(format!(".{}.partial", std::process::id()));
        let temp = target.with_file_name(temp_name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        Ok(Self {
            out: BufWriter::with_capacity(256 * 1024, file),
            temp,
            target: target.to_owned(),
            committed: false,
        })
    }

    /// Makes the file durable, then gives it its name.
    pub fn commit(mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        // The rename itself survives a crash only once the directory is synced.
        #[cfg(unix)]
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Write for PartialFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A bar (total known) or spinner on a terminal; plain lines every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: Option<u64>,
    started: Instant,
    last_line: std::cell::Cell<Instant>,
}

/// How often the plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    fn new(total: Option<u64>, quiet: bool, shares_terminal: bool) -> Self {
        let terminal = io::stderr().is_terminal();
        let bar = (!quiet && terminal && !shares_terminal).then(|| {
            let (bar, template) = match total {
                Some(total) => (ProgressBar::new(total), "{bar:40} {pos}/{len} users, {rate}, ETA {eta}"),
                None => (ProgressBar::new_spinner(), "{spinner} {pos} users, {rate}, {elapsed}"),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} users/s", state.per_sec());
                    }),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        let now = Instant::now();
        Self { bar, plain: !quiet && !terminal, total, started: now, last_line: std::cell::Cell::new(now) }
    }

    fn tick(&self, done: u64) {
        if let Some(bar) = &self.bar {
            // Users stored since the count make the total an estimate.
            if bar.length().is_some_and(|len| done > len) {
                bar.set_length(done);
            }
            bar.set_position(done);
        } else if self.plain && self.last_line.get().elapsed() >= PLAIN_EVERY {
            self.last_line.set(Instant::now());
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            match self.total {
                Some(total) => eprintln!(
                    "export: {done}/{total} users ({:.0}%), {rate:.0} users/s",
                    100.0 * done as f64 / total.max(1) as f64
                ),
                None => eprintln!("export: {done} users, {rate:.0} users/s"),
            }
        }
    }

    fn finish(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            // The summary line says it all; it goes where the bar was.
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// An export that failed or was interrupted leaves no half-drawn bar before its message.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.as_ref().filter(|bar| !bar.is_finished()) {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_dropped_before_commit_leaves_nothing_and_an_earlier_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("users.ndjson");
        std::fs::write(&target, "earlier export\n").unwrap();
        {
            let mut file = PartialFile::create(&target).unwrap();
            writeln!(file, "{{\"id\":\"half\"}}").unwrap();
            file.flush().unwrap();
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "earlier export\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["users.ndjson"], "the temporary file was left behind");
    }

    #[test]
    fn a_committed_partial_file_replaces_the_target_whole() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("users.ndjson");
        std::fs::write(&target, "earlier export\n").unwrap();
        let mut file = PartialFile::create(&target).unwrap();
        writeln!(file, "{{\"id\":\"a\"}}").unwrap();
        writeln!(file, "{{\"id\":\"b\"}}").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "earlier export\n", "replaced before commit");
        file.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
