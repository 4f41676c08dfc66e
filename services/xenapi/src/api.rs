//! The service facade: state, construction, the transport entry points and the poll model.
//!
//! # Poll model
//! There are no threads. [`XenApi::handle`] answers at once with [`Handled::Ready`], or with
//! [`Handled::Pending`] for a call that must block (`event.from`, `event.next`, a synchronous
//! call running a long job). The server keeps the [`PendingCall`] and passes it back to
//! [`XenApi::poll`] whenever [`XenApi::last_event_id`] has changed since it last looked (any
//! object change, including task progress, moves it) or when
//! [`PendingCall::wake_at`] has passed; `poll` answers or hands the call back still pending.
//! Long jobs advance only when the server calls [`XenApi::run_tasks`] (e.g. once per loop
//! iteration while [`XenApi::has_running_tasks`]).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use crate::auth::{check_phc, LoginPolicy, LoginThrottle, PasswordHashError, VerifierState};
use crate::classes;
use crate::dispatch::{self, CallContext, CallOutcome, Job};
use crate::error::ApiError;
use crate::guest::{DomId, GuestBackend};
use crate::handlers::network::{self, NetworkState};
use crate::handlers::pif;
use crate::handlers::vm_builtin;
use crate::handlers::vm_power::PendingShutdown;
use crate::handlers::{self, LegacySubscription, Subscription};
use crate::jsonrpc::{self, JsonReplyTo};
use crate::network_backend::NetworkBackend;
use crate::persist::{self, AutoStart, DatabaseSink, Persistence};
use crate::schema::Schema;
use crate::storage::StorageBackend;
use crate::store::{consistent, Db, Entropy};
use crate::tasks;
use crate::time::Timestamp;
use crate::value::Value;
use crate::xmlrpc;

/// XenAPI version this service reports (`host.API_version_major/minor`), that of a recent
/// xapi.
pub const API_VERSION_MAJOR: i64 = 2;
pub const API_VERSION_MINOR: i64 = 21;

/// Facts about the machine the kernel measures and hands in.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HostFacts {
    pub hostname: String,
    /// Management IP address as text.
    pub address: String,
    pub cpu_count: u32,
    pub socket_count: u32,
    pub cpu_vendor: String,
    pub cpu_model_name: String,
    pub cpu_speed_mhz: u32,
    pub cpu_family: u32,
    pub cpu_model: u32,
    pub cpu_stepping: u32,
    /// `/proc/cpuinfo`-style space-separated flags.
    pub cpu_flags: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Hypervisor version, e.g. `4.19.1`.
    pub xen_version: String,
    /// Keel's own version, reported as `product_version`.
    pub product_version: String,
    /// Further `software_version` entries (build date, commit, ...).
    pub extra_software_version: Vec<(String, String)>,
    /// Memory of the control domain (Keel itself), for its VM record; 0 when unknown.
    pub control_domain_memory_bytes: u64,
}

/// Bounds on what clients can make the service hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Events kept for `event.from`/`event.next`; older tokens get `EVENTS_LOST`.
    pub event_history: usize,
    /// Live sessions; a login beyond it ends the least recently active session.
    pub max_sessions: usize,
    /// Task objects kept; the oldest finished ones are forgotten first.
    pub max_tasks: usize,
    /// Unfinished tasks; more gives `TOO_MANY_PENDING_TASKS`.
    pub max_pending_tasks: usize,
    /// Longest `event.from` wait honoured, whatever timeout the client asks.
    pub max_event_wait_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            event_history: 1024,
            max_sessions: 256,
            max_tasks: 512,
            max_pending_tasks: 64,
            max_event_wait_ms: 5 * 60 * 1000,
        }
    }
}

pub struct Config {
    /// Argon2 PHC string of root's password (see [`crate::auth::hash_password`]). `None`
    /// means no password was configured: every login fails, there is no default.
    pub root_password_phc: Option<String>,
    pub facts: HostFacts,
    pub limits: Limits,
    pub login_policy: LoginPolicy,
    /// The data model; [`classes::ALL`] unless a test or a later issue extends it.
    pub schema: Schema,
    /// The storage manager behind the SR, PBD and VDI classes; `None` = no storage.
    pub storage: Option<Box<dyn StorageBackend>>,
    /// The toolstack behind the VM power operations; `None` = this host runs no guests
    /// (they fail with `OPERATION_NOT_ALLOWED`).
    pub guests: Option<Box<dyn GuestBackend>>,
    /// The virtual switch and netback behind networks, VLANs and VIFs (network_backend.rs);
    /// `None` = no switch (networks exist, VIFs do not plug).
    pub network: Option<Box<dyn NetworkBackend>>,
    /// The host database read at boot: its objects are put back (persist.rs). `None` = a
    /// fresh host.
    pub restore: Option<keel_hostdb::Database>,
    /// Where every change to the kept objects is saved before its call is answered; `None` =
    /// nothing persists.
    pub database_sink: Option<Box<dyn DatabaseSink>>,
    /// The host's performance data for the data source calls (metrics.rs); `None` = none.
    pub metering: Option<Box<dyn crate::metrics::MeteringView>>,
}

impl Config {
    pub fn new(root_password_phc: String, facts: HostFacts) -> Self {
        Config {
            root_password_phc: Some(root_password_phc),
            facts,
            limits: Limits::default(),
            login_policy: LoginPolicy::default(),
            schema: classes::ALL,
            storage: None,
            guests: None,
            network: None,
            restore: None,
            database_sink: None,
            metering: None,
        }
    }
}

/// Why a blocked call is blocked.
#[derive(Clone, Debug, PartialEq)]
pub enum Wait {
    /// `event.from`: answer when an event matching `subscription` is newer than `after`, or
    /// at `deadline` with no events.
    EventFrom {
        session: String,
        subscription: Subscription,
        after: u64,
        deadline: Timestamp,
    },
    /// `event.next`: answer when the session's registered classes have an event.
    EventNext { session: String },
    /// A synchronous call running as `task`: answer when it finishes.
    Task { task: String },
}

impl Wait {
    pub fn deadline(&self) -> Option<Timestamp> {
        match self {
            Wait::EventFrom { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }
}

/// Everything the service holds; handlers reach it through [`CallContext`].
pub struct State {
    pub(crate) db: Db,
    pub(crate) throttle: LoginThrottle,
    pub(crate) root_phc: Option<String>,
    pub(crate) host: String,
    pub(crate) pool: String,
    pub(crate) host_metrics: String,
    pub(crate) limits: Limits,
    pub(crate) jobs: BTreeMap<String, Box<dyn Job>>,
    pub(crate) task_order: VecDeque<String>,
    pub(crate) sync_tasks: BTreeSet<String>,
    pub(crate) sync_results: BTreeMap<String, Result<Value, ApiError>>,
    pub(crate) legacy: BTreeMap<String, LegacySubscription>,
    pub(crate) storage: Option<Box<dyn StorageBackend>>,
    pub(crate) guests: Option<Box<dyn GuestBackend>>,
    /// Clean shutdowns and reboots waiting for their guest, by domid.
    pub(crate) shutdowns: BTreeMap<DomId, PendingShutdown>,
    /// The switch and the counters' last samples.
    pub(crate) network: NetworkState,
    /// The host database: what was restored, what to save.
    pub(crate) persist: Persistence,
    /// What the host boot did to the restored objects (`None` without a restore).
    pub(crate) host_boot: Option<keel_hostdb::BootPlan>,
    /// The host's performance data (metrics.rs).
    pub(crate) metering: Option<Box<dyn crate::metrics::MeteringView>>,
}

/// Which codec a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /` and `POST /RPC2`.
    XmlRpc,
    /// `POST /jsonrpc`.
    JsonRpc,
}

impl Endpoint {
    /// Map a request path (query string ignored) to its endpoint.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.split('?').next().unwrap_or("");
        match path {
            "/" | "/RPC2" => Some(Endpoint::XmlRpc),
            "/jsonrpc" => Some(Endpoint::JsonRpc),
            _ => None,
        }
    }
}

/// An HTTP response body and its content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq)]
enum ReplyCodec {
    XmlRpc,
    JsonRpc(JsonReplyTo),
}

/// A call waiting for an event, a deadline or a task; give it back to [`XenApi::poll`].
#[derive(Clone, Debug, PartialEq)]
pub struct PendingCall {
    codec: ReplyCodec,
    wait: Wait,
}

impl PendingCall {
    /// When to poll even if nothing happened (None: only on events).
    pub fn wake_at(&self) -> Option<Timestamp> {
        self.wait.deadline()
    }

    pub fn wait(&self) -> &Wait {
        &self.wait
    }
}

pub enum Handled {
    Ready(Response),
    Pending(PendingCall),
}

pub struct XenApi {
    pub(crate) state: State,
}

impl XenApi {
    /// Build the service with its pool, host and host_metrics objects.
    pub fn new(
        config: Config,
        entropy: Box<dyn Entropy>,
        now: Timestamp,
    ) -> Result<XenApi, PasswordHashError> {
        if let Some(phc) = &config.root_password_phc {
            check_phc(phc)?;
        }
        let mut db = Db::new(config.schema, entropy, config.limits.event_history);
        let (host_metrics, host, pool) = classes::create_singletons(&mut db, &config.facts, now);
        // The password's verification memory is reserved now, once (auth.rs, "Memory").
        let mut throttle = LoginThrottle::new(config.login_policy);
        if let Some(phc) = &config.root_password_phc {
            throttle.reserve_verifier(phc);
        }
        let state = State {
            db,
            throttle,
            root_phc: config.root_password_phc,
            host,
            pool,
            host_metrics,
            limits: config.limits,
            jobs: BTreeMap::new(),
            task_order: VecDeque::new(),
            sync_tasks: BTreeSet::new(),
            sync_results: BTreeMap::new(),
            legacy: BTreeMap::new(),
            storage: config.storage,
            guests: config.guests,
            shutdowns: BTreeMap::new(),
            network: NetworkState::new(config.network),
            persist: Persistence::new(config.database_sink),
            host_boot: None,
            metering: config.metering,
        };
        let mut api = XenApi { state };
        api.refresh_storage(now);
        // Only with the VM classes declared (a test's own schema may leave them out).
        if api.state.db.class("VM").is_some() {
            let state = &mut api.state;
            consistent(vm_builtin::create_control_domain(state, &config.facts, now));
            consistent(vm_builtin::create_templates(&mut state.db, now));
        }
        // Only with the network classes declared, as for the VM classes.
        if api.state.db.class("PIF").is_some() {
            let host = api.state.host.clone();
            pif::create_management_pif(&mut api.state.db, &host, now);
        }
        if let Some(saved) = config.restore {
            let plan = persist::restore(&mut api.state, saved, now);
            api.state.host_boot = Some(plan);
        }
        network::bring_up_bridges(&mut api.state);
        // The reset power states and a new host's first objects are durable from the start.
        persist::save_if_changed(&mut api.state);
        Ok(api)
    }

    /// Decode a request body, run it, and encode the answer (or hand back a pending call).
    /// A ready answer may have to wait before it is sent: see [`XenApi::take_reply_hold`].
    pub fn handle(&mut self, endpoint: Endpoint, body: &[u8], now: Timestamp) -> Handled {
        self.state.throttle.take_hold();
        let (call, codec) = match endpoint {
            Endpoint::XmlRpc => match xmlrpc::decode_call(body) {
                Ok(call) => (call, ReplyCodec::XmlRpc),
                Err(e) => {
                    return Handled::Ready(encode(&ReplyCodec::XmlRpc, &Err(e.to_api_error())))
                }
            },
            Endpoint::JsonRpc => match jsonrpc::decode_call(body) {
                Ok((call, reply_to)) => (call, ReplyCodec::JsonRpc(reply_to)),
                Err(failure) => {
                    return Handled::Ready(Response {
                        content_type: jsonrpc::CONTENT_TYPE,
                        body: jsonrpc::encode_decode_failure(&failure),
                    })
                }
            },
        };
        let outcome = self.call(&call.method, call.params, now);
        self.finish(codec, outcome)
    }

    /// Re-examine a pending call (see the module docs for when).
    pub fn poll(&mut self, pending: PendingCall, now: Timestamp) -> Handled {
        let outcome = self.resume(pending.wait, now);
        self.finish(pending.codec, outcome)
    }

    fn finish(&mut self, codec: ReplyCodec, outcome: CallOutcome) -> Handled {
        match outcome {
            CallOutcome::Done(result) => Handled::Ready(encode(&codec, &result)),
            CallOutcome::Pending(wait) => Handled::Pending(PendingCall { codec, wait }),
        }
    }

    /// The transport-free API: run `method` with `params`.
    /// A change to a kept object is saved (persist.rs) before this returns.
    pub fn call(&mut self, method: &str, params: Vec<Value>, now: Timestamp) -> CallOutcome {
        let outcome = dispatch::call(&mut self.state, method, params, now);
        persist::save_if_changed(&mut self.state);
        outcome
    }

    /// The transport-free counterpart of [`XenApi::poll`].
    pub fn resume(&mut self, wait: Wait, now: Timestamp) -> CallOutcome {
        let mut ctx = CallContext {
            state: &mut self.state,
            now,
            session: None,
        };
        let outcome = handlers::resume(&mut ctx, wait);
        persist::save_if_changed(&mut self.state);
        outcome
    }

    /// Step every running job once; returns how many are still running.
    pub fn run_tasks(&mut self, now: Timestamp) -> usize {
        self.step_tasks(now).running
    }

    /// Step every running job once; says how many still run and whether any did work.
    pub fn step_tasks(&mut self, now: Timestamp) -> tasks::TaskRound {
        let mut ctx = CallContext {
            state: &mut self.state,
            now,
            session: None,
        };
        let round = tasks::run(&mut ctx);
        persist::save_if_changed(&mut self.state);
        round
    }

    /// When the answer of the call [`XenApi::handle`] just made may be sent, if it must wait:
    /// a failed login is answered only after the throttle's delay (auth.rs). The server holds
    /// the answer (and the connection's next request) until then. Cleared by reading.
    pub fn take_reply_hold(&mut self) -> Option<Timestamp> {
        self.state.throttle.take_hold()
    }

    /// Passwords verified since start: a server runs at most one verification per round
    /// (each holds the CPU for the hash's cost).
    pub fn password_verifications(&self) -> u64 {
        self.state.throttle.verifications()
    }

    /// Whether root's password can be verified: the slot reserved at start-up, or why not.
    pub fn login_verifier(&self) -> VerifierState {
        self.state.throttle.verifier_state()
    }

    pub fn has_running_tasks(&self) -> bool {
        !self.state.jobs.is_empty()
    }

    /// Id of the newest event; when it moves, pending calls are worth polling.
    pub fn last_event_id(&self) -> u64 {
        self.state.db.events().last_id()
    }

    /// Refresh the host's measured facts, publishing `mod` events only for what changed.
    pub fn update_host_facts(&mut self, facts: &HostFacts, now: Timestamp) {
        let (host, metrics) = (self.state.host.clone(), self.state.host_metrics.clone());
        let applied = classes::apply_facts(&mut self.state.db, &host, &metrics, facts, now);
        crate::store::consistent(applied);
        persist::save_if_changed(&mut self.state);
    }

    /// Everything the host database keeps, as it stands (what the next save would write).
    pub fn export_database(&self) -> keel_hostdb::Database {
        persist::export(&self.state.db)
    }

    /// What the host boot did to the restored objects: which VMs it halted and which it
    /// starts. `None` when nothing was restored.
    pub fn host_boot(&self) -> Option<&keel_hostdb::BootPlan> {
        self.state.host_boot.as_ref()
    }

    /// Starts the VMs marked `other_config:auto_poweron=true` that the restore found halted
    /// (see [`XenApi::host_boot`]), each through `VM.start` as an `Async.VM.start` task.
    /// Only the first call starts anything.
    pub fn start_auto_poweron_vms(&mut self, now: Timestamp) -> Vec<AutoStart> {
        let started = persist::start_auto_poweron_vms(&mut self.state, now);
        persist::save_if_changed(&mut self.state);
        started
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    pub fn host_ref(&self) -> &str {
        &self.state.host
    }

    pub fn pool_ref(&self) -> &str {
        &self.state.pool
    }
}

fn encode(codec: &ReplyCodec, result: &Result<Value, ApiError>) -> Response {
    match codec {
        ReplyCodec::XmlRpc => Response {
            content_type: xmlrpc::CONTENT_TYPE,
            body: xmlrpc::encode_response(result),
        },
        ReplyCodec::JsonRpc(reply_to) => Response {
            content_type: jsonrpc::CONTENT_TYPE,
            body: jsonrpc::encode_response(reply_to, result),
        },
    }
}
