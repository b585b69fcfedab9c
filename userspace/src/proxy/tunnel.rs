//! Forwarded TCP connections (`ssh -L`, `ssh -R`): a client-side and a target-side channel
//! joined byte for byte, with the same window-respecting writes as sessions.

use russh::{client, server, Channel, ChannelMsg};

/// Relays `down` (the client's channel) and `up` (the target's) until either side closes;
/// returns the abort handle of the task relaying towards the client.
pub fn join(down: Channel<server::Msg>, up: Channel<client::Msg>) -> tokio::task::AbortHandle {
    let (mut dr, dw) = down.split();
    let (mut ur, uw) = up.split();
    let to_client = tokio::spawn(async move {
        while let Some(m) = ur.wait().await {
            let r = match m {
                ChannelMsg::Data { data } => dw.data_bytes(data).await,
                ChannelMsg::Eof => dw.eof().await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = dw.close().await;
    });
    tokio::spawn(async move {
        while let Some(m) = dr.wait().await {
            let r = match m {
                ChannelMsg::Data { data } => uw.data_bytes(data).await,
                ChannelMsg::Eof => uw.eof().await,
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = uw.close().await;
    });
    to_client.abort_handle()
}
