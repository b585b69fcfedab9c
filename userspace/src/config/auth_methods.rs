//! `[auth] methods`: which client authentication methods the gateway offers.

/// The client authentication methods the gateway offers (`[auth] methods`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthMethods {
    pub none: bool,
    pub publickey: bool,
    pub keyboard_interactive: bool,
}

impl Default for AuthMethods {
    fn default() -> Self {
        Self {
            none: true,
            publickey: true,
            keyboard_interactive: true,
        }
    }
}
