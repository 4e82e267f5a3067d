//! The names of the systemd unit properties the launcher sets and reads,
//! used by the translation, the D-Bus readers and the tests alike.

pub const ACTIVE_ENTER_TIMESTAMP: &str = "ActiveEnterTimestamp";
pub const ACTIVE_STATE: &str = "ActiveState";
pub const CPU_ACCOUNTING: &str = "CPUAccounting";
pub const CPU_QUOTA_PER_SEC_USEC: &str = "CPUQuotaPerSecUSec";
pub const CPU_USAGE_NSEC: &str = "CPUUsageNSec";
pub const CAPABILITY_BOUNDING_SET: &str = "CapabilityBoundingSet";
pub const CONTROL_GROUP: &str = "ControlGroup";
pub const DESCRIPTION: &str = "Description";
pub const DYNAMIC_USER: &str = "DynamicUser";
pub const ENVIRONMENT: &str = "Environment";
pub const EXEC_MAIN_CODE: &str = "ExecMainCode";
pub const EXEC_MAIN_STATUS: &str = "ExecMainStatus";
pub const EXEC_START: &str = "ExecStart";
pub const INACTIVE_ENTER_TIMESTAMP: &str = "InactiveEnterTimestamp";
pub const KILL_MODE: &str = "KillMode";
pub const LOAD_CREDENTIAL: &str = "LoadCredential";
pub const LOAD_STATE: &str = "LoadState";
pub const LOCK_PERSONALITY: &str = "LockPersonality";
pub const LOG_EXTRA_FIELDS: &str = "LogExtraFields";
pub const MAIN_PID: &str = "MainPID";
pub const MEMORY_ACCOUNTING: &str = "MemoryAccounting";
pub const MEMORY_CURRENT: &str = "MemoryCurrent";
pub const MEMORY_DENY_WRITE_EXECUTE: &str = "MemoryDenyWriteExecute";
pub const MEMORY_MAX: &str = "MemoryMax";
pub const MEMORY_HIGH: &str = "MemoryHigh";
pub const AFTER: &str = "After";
pub const WANTS: &str = "Wants";
pub const BINDS_TO: &str = "BindsTo";
pub const CPU_WEIGHT: &str = "CPUWeight";
pub const IO_WEIGHT: &str = "IOWeight";
pub const OOM_POLICY: &str = "OOMPolicy";
pub const LOG_RATE_LIMIT_INTERVAL_USEC: &str = "LogRateLimitIntervalUSec";
pub const LOG_RATE_LIMIT_BURST: &str = "LogRateLimitBurst";
pub const N_RESTARTS: &str = "NRestarts";
pub const NO_NEW_PRIVILEGES: &str = "NoNewPrivileges";
pub const PRIVATE_DEVICES: &str = "PrivateDevices";
pub const PRIVATE_TMP: &str = "PrivateTmp";
pub const PROC_SUBSET: &str = "ProcSubset";
pub const PROTECT_CLOCK: &str = "ProtectClock";
pub const PROTECT_CONTROL_GROUPS: &str = "ProtectControlGroups";
pub const PROTECT_HOME: &str = "ProtectHome";
pub const PROTECT_HOSTNAME: &str = "ProtectHostname";
pub const PROTECT_KERNEL_LOGS: &str = "ProtectKernelLogs";
pub const PROTECT_KERNEL_MODULES: &str = "ProtectKernelModules";
pub const PROTECT_KERNEL_TUNABLES: &str = "ProtectKernelTunables";
pub const PROTECT_PROC: &str = "ProtectProc";
pub const PROTECT_SYSTEM: &str = "ProtectSystem";
pub const RESTART: &str = "Restart";
pub const RESTART_USEC: &str = "RestartUSec";
pub const RESTART_STEPS: &str = "RestartSteps";
pub const RESTART_MAX_DELAY_USEC: &str = "RestartMaxDelayUSec";

/// The systemd version that added `RestartSteps=` and
/// `RestartMaxDelaySec=` (a restart delay that grows).
pub const RESTART_STEPS_SINCE: u32 = 254;

/// Does a manager of `version` (0: unknown, assume current) take `name`?
pub fn supported(name: &str, version: u32) -> bool {
    match name {
        RESTART_STEPS | RESTART_MAX_DELAY_USEC => has_restart_steps(version),
        _ => true,
    }
}

/// Does a manager of `version` (0: unknown, assume current) grow the
/// restart delay itself? If not, the launcher paces the restarts.
pub fn has_restart_steps(version: u32) -> bool {
    version == 0 || version >= RESTART_STEPS_SINCE
}
pub const RESTRICT_ADDRESS_FAMILIES: &str = "RestrictAddressFamilies";
pub const RESTRICT_NAMESPACES: &str = "RestrictNamespaces";
pub const RESTRICT_REALTIME: &str = "RestrictRealtime";
pub const RESTRICT_SUID_SGID: &str = "RestrictSUIDSGID";
pub const RESULT: &str = "Result";
pub const SLICE: &str = "Slice";
pub const STANDARD_ERROR: &str = "StandardError";
pub const STANDARD_OUTPUT: &str = "StandardOutput";
pub const START_LIMIT_BURST: &str = "StartLimitBurst";
pub const START_LIMIT_INTERVAL_USEC: &str = "StartLimitIntervalUSec";
pub const SUB_STATE: &str = "SubState";
pub const SYSLOG_IDENTIFIER: &str = "SyslogIdentifier";
pub const SYSTEM_CALL_ARCHITECTURES: &str = "SystemCallArchitectures";
pub const SYSTEM_CALL_ERROR_NUMBER: &str = "SystemCallErrorNumber";
pub const SYSTEM_CALL_FILTER: &str = "SystemCallFilter";
pub const TASKS_ACCOUNTING: &str = "TasksAccounting";
pub const TASKS_CURRENT: &str = "TasksCurrent";
pub const TASKS_MAX: &str = "TasksMax";
pub const TIMEOUT_STOP_USEC: &str = "TimeoutStopUSec";
pub const TYPE: &str = "Type";
pub const UMASK: &str = "UMask";
pub const USER: &str = "User";
pub const WATCHDOG_USEC: &str = "WatchdogUSec";
