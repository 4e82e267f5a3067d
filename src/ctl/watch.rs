//! Watching the fleet: `prismctl events [-f]`, and the streams behind
//! `ps -w` and `describe -w`. A stream that breaks (its admin stopped, or
//! ended it for falling behind) is picked up on the next admin of
//! `--admin`, from the last revision seen: nothing is missed or repeated.

use std::time::Duration;

use clap::Args;
use tonic::Code;

use super::{
    Error, Global,
    client::call_failed,
    output::{Format, out},
};
use crate::{
    auth::dial::describe,
    pb::prism::admin::v1::{self as apb, admin_client::AdminClient},
};

#[derive(Args, Debug, Default, Clone)]
pub struct EventsArgs {
    /// Keep printing events as they happen (until Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,
    /// Events after this revision (a listing's, or the last one seen)
    /// [default: the last 20, or from now on with --follow].
    #[arg(long, value_name = "REVISION")]
    pub since: Option<i64>,
    /// Only events of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only events of this launcher.
    #[arg(long)]
    pub launcher: Option<String>,
    /// Only events of this process (a trailing * matches a prefix).
    #[arg(long)]
    pub process: Option<String>,
    /// Only these kinds (process.failed…) or families (process, launcher,
    /// cluster); repeat or comma-separate.
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Print bookmarks too (where the stream stands, every few seconds
    /// while nothing happens).
    #[arg(long)]
    pub bookmarks: bool,
}

/// How long a broken stream is retried, over every admin, before giving
/// up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// A watch that survives its admin: each break resumes on the next admin
/// that answers, after the last revision seen.
pub struct Follow<'g> {
    g: &'g Global,
    req: apb::WatchRequest,
    stream: Option<tonic::Streaming<apb::Event>>,
    /// The last revision seen (event or bookmark).
    pub last: Option<i64>,
}

impl<'g> Follow<'g> {
    pub fn new(g: &'g Global, req: apb::WatchRequest) -> Self {
        let last = req.since_revision;
        Self {
            g,
            req,
            stream: None,
            last,
        }
    }

    async fn open(&mut self) -> Result<(), Error> {
        let mut admin = self.g.admin.connect().await?;
        let mut req = self.req.clone();
        req.since_revision = self.last;
        let stream = admin
            .api
            .watch_events(req)
            .await
            .map_err(|s| call_failed("watching events", s))?
            .into_inner();
        self.stream = Some(stream);
        Ok(())
    }

    /// The next event (or bookmark).
    pub async fn next(&mut self) -> Result<apb::Event, Error> {
        let mut broken_since: Option<tokio::time::Instant> = None;
        let mut wait = Duration::from_millis(100);
        loop {
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => {}
                    Err(Error::Unreachable(why)) => {
                        let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > RECONNECT_FOR {
                            return Err(Error::Unreachable(why));
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(e)) => {
                    self.last = Some(e.revision);
                    return Ok(e);
                }
                Ok(None) => {
                    // The server ended it without a word: resume.
                    self.stream = None;
                }
                Err(status) => {
                    self.stream = None;
                    match status.code() {
                        // Too slow: resume where it stopped.
                        Code::ResourceExhausted => {
                            eprintln!("prismctl: {}; resuming", status.message());
                        }
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal => {
                            eprintln!(
                                "prismctl: the event stream broke ({}); resuming after revision {} on the next admin that answers",
                                describe(&status),
                                self.last.map_or("-".into(), |r| r.to_string())
                            );
                            broken_since.get_or_insert_with(tokio::time::Instant::now);
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(2));
                        }
                        _ => return Err(call_failed("watching events", status)),
                    }
                }
            }
        }
    }
}

/// The fleet's revision now (a listing's).
async fn head(g: &Global) -> Result<i64, Error> {
    let mut admin = g.admin.connect().await?;
    Ok(admin
        .api
        .list_launchers(apb::ListLaunchersRequest {})
        .await
        .map_err(|s| call_failed("reading the fleet's revision", s))?
        .into_inner()
        .revision)
}

/// One event as a line of the table: revision, time, kind, subject,
/// message.
pub fn line(e: &apb::Event) -> String {
    let at = crate::clock::format_rfc3339_ms(e.at_unix_ms);
    let subject = if !e.process_id.is_empty() {
        e.process_id.clone()
    } else if !e.launcher_id.is_empty() {
        e.launcher_id.clone()
    } else {
        "-".into()
    };
    format!(
        "{:<8} {at}  {:<24} {:<20} {}\n",
        e.revision, e.kind, subject, e.message
    )
}

pub const HEADER: &str =
    "REVISION TIME                      KIND                     SUBJECT              MESSAGE\n";

fn print(format: Format, e: &apb::Event) -> Result<(), Error> {
    match format {
        Format::Json => {
            let text = serde_json::to_string(e)
                .map_err(|err| Error::Failed(format!("cannot encode JSON: {err}")))?;
            out(&(text + "\n"));
        }
        Format::Yaml => {
            let text = serde_norway::to_string(e)
                .map_err(|err| Error::Failed(format!("cannot encode YAML: {err}")))?;
            out(&format!("---\n{text}"));
        }
        Format::Table | Format::Wide => out(&line(e)),
    }
    Ok(())
}

pub async fn events(g: &Global, a: &EventsArgs) -> Result<(), Error> {
    let since = match (a.since, a.follow) {
        (Some(s), _) => Some(s),
        (None, true) => None,
        (None, false) => Some((head(g).await? - 20).max(0)),
    };
    let req = apb::WatchRequest {
        namespace: a.namespace.clone().unwrap_or_default(),
        launcher_id: a.launcher.clone().unwrap_or_default(),
        process_id: a.process.clone().unwrap_or_default(),
        kinds: a.kinds.clone(),
        since_revision: since,
        // Without --follow, the first bookmark says the stream has caught
        // up: soon after the last event kept.
        bookmark_interval_ms: if a.follow { 0 } else { 200 },
    };
    let mut follow = Follow::new(g, req);
    if matches!(g.output, Format::Table | Format::Wide) {
        out(HEADER);
    }
    loop {
        let e = follow.next().await?;
        if e.kind == crate::admin::events::BOOKMARK {
            if !a.follow {
                return Ok(());
            }
            if a.bookmarks {
                print(g.output, &e)?;
            }
            continue;
        }
        print(g.output, &e)?;
    }
}

/// Watch from `revision` on for `ps -w`/`describe -w`: a stream of the
/// process events matching `req`.
pub fn from(g: &Global, mut req: apb::WatchRequest, revision: i64) -> Follow<'_> {
    req.since_revision = Some(revision);
    Follow::new(g, req)
}

/// The client type the streams use (for tests that watch directly).
pub type Client = AdminClient<tonic::transport::Channel>;
