//! Tools whose list lives elsewhere (a gRPC tool service's `List`): fetched in the
//! background, at start-up and then periodically, so a service that is down when the
//! broker starts, or that adds a tool later, needs no broker restart, and one that is
//! down costs a script a clear error, never the broker its start.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use super::{Answers, CallLimits, Registered, Tool, ToolError, ToolErrorKind, ToolSpec};

/// How long one listing may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retries after a failed listing come quickly (a service starting next to
/// the broker), then back off to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_millis(500);

pub(crate) type ListFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Listed>, String>> + Send + 'a>>;

/// One tool a source listed.
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) spec: ToolSpec,
    pub(crate) tool: Arc<dyn Tool>,
}

/// Asks a source for its tools.
pub(crate) trait Lister: Send + Sync + 'static {
    fn list(&self) -> ListFuture<'_>;
}

type Catalogue = Arc<BTreeMap<String, Arc<Registered>>>;

pub(crate) struct Source {
    /// `tool_services.db`: what logs, errors and metrics call it.
    label: String,
    answers: Answers,
    limits: CallLimits,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    tools: Catalogue,
    /// Whether the last listing failed (the reason is in the log, not here: it may
    /// name internal addresses, and this reaches scripts).
    down: bool,
    listed_once: bool,
}

impl Source {
    /// A source whose tools `lister` lists, every `refresh` and soon after a failure,
    /// for as long as the source is alive.
    pub(crate) fn start(
        label: String,
        answers: Answers,
        limits: CallLimits,
        refresh: Duration,
        lister: Arc<dyn Lister>,
    ) -> Arc<Source> {
        let source = Arc::new(Source {
            label,
            answers,
            limits,
            state: RwLock::new(State::default()),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&source), lister, refresh));
        source
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn answers(&self) -> &Answers {
        &self.answers
    }

    /// The tools as last listed.
    pub(crate) fn listed(&self) -> Catalogue {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tools
            .clone()
    }

    /// The tool `name` (which this source answers), or why it cannot be called.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Registered>, ToolError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(registered) = state.tools.get(name) {
            return Ok(registered.clone());
        }
        let message = if !state.listed_once {
            format!(
                "{} has not listed its tools yet (it is unreachable or starting)",
                self.label
            )
        } else if state.down {
            format!(
                "{} does not list `{name}` (its last listing failed; it may be down)",
                self.label
            )
        } else {
            let names: Vec<&str> = state.tools.keys().map(String::as_str).collect();
            format!(
                "unknown tool `{name}`; {} has: {}",
                self.label,
                names.join(", ")
            )
        };
        Err(ToolError::new(ToolErrorKind::UnknownTool, message))
    }

    /// Takes a listing: only names this source answers, with schemas that compile.
    fn update(&self, listing: Result<Vec<Listed>, String>) {
        let listed = match listing {
            Ok(listed) => listed,
            Err(reason) => {
                tracing::warn!(source = %self.label, %reason, "listing tools failed");
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                state.down = true;
                return;
            }
        };
        let mut tools = BTreeMap::new();
        for Listed { name, spec, tool } in listed {
            if !self.answers.matches(&name) {
                tracing::warn!(source = %self.label, tool = %name, answers = %self.answers, "ignoring a listed tool outside the names this service answers");
                continue;
            }
            match Registered::new(&name, tool, spec, self.limits.clone()) {
                Ok(registered) => {
                    tools.insert(name, Arc::new(registered));
                }
                Err(e) => {
                    tracing::warn!(source = %self.label, error = %e, "ignoring a listed tool")
                }
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let changed = state.down
            || !state.listed_once
            || state.tools.len() != tools.len()
            || !state.tools.keys().eq(tools.keys());
        if changed {
            tracing::info!(
                source = %self.label,
                tools = %tools.keys().cloned().collect::<Vec<_>>().join(", "),
                "tools listed"
            );
        }
        state.tools = Arc::new(tools);
        state.down = false;
        state.listed_once = true;
    }
}

async fn refresh_loop(source: Weak<Source>, lister: Arc<dyn Lister>, refresh: Duration) {
    let mut retry = FIRST_RETRY;
    loop {
        let listing = match tokio::time::timeout(LIST_TIMEOUT, lister.list()).await {
            Ok(listing) => listing,
            Err(_) => Err(format!("no answer within {} s", LIST_TIMEOUT.as_secs())),
        };
        let ok = listing.is_ok();
        let Some(alive) = source.upgrade() else {
            return;
        };
        alive.update(listing);
        drop(alive);
        let wait = if ok {
            retry = FIRST_RETRY;
            refresh
        } else {
            let wait = retry.min(refresh);
            retry = (retry * 2).min(refresh);
            wait
        };
        tokio::time::sleep(wait).await;
        if source.strong_count() == 0 {
            return;
        }
    }
}
