use std::time::Duration;

/// Limits and defaults of the engine, the same for every connection.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The container-id we send in Open.
    pub container_id: String,
    /// Largest frame we accept (and advertise).
    pub max_frame_size: u32,
    /// Highest channel number we accept.
    pub channel_max: u16,
    /// A peer silent for this long is closed; we advertise half of it. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Largest message we accept after multi-frame reassembly.
    pub max_message_size: u64,
    /// Credit we grant each producer link.
    pub link_credit: u32,
    /// Refuse clients that skip SASL.
    pub require_sasl: bool,
    /// Time allowed for the protocol header, SASL and Open.
    pub handshake_timeout: Duration,
    /// Connection properties we send in Open (`product`, `version`: how tools tell which
    /// broker they reached).
    pub properties: Vec<(&'static str, String)>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            container_id: "ferrobus".into(),
            max_frame_size: 262_144,
            channel_max: 1023,
            idle_timeout: Some(Duration::from_secs(120)),
            max_message_size: 100 * 1024 * 1024,
            link_credit: 1000,
            require_sasl: false,
            handshake_timeout: Duration::from_secs(30),
            properties: Vec::new(),
        }
    }
}
