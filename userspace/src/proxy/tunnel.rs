//! Forwarded TCP connections (`ssh -L`, `ssh -R`), and agent and X11 channels: a
//! client-side and a target-side channel joined byte for byte, with the same
//! window-respecting writes as sessions.

use russh::{client, server, Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};

/// Relays `down` (the client's channel) and `up` (the target's) until either side closes;
/// returns the abort handle of the task relaying towards the client.
pub fn join(down: Channel<server::Msg>, up: Channel<client::Msg>) -> tokio::task::AbortHandle {
    let (dr, dw) = down.split();
    let (ur, uw) = up.split();
    let to_client = tokio::spawn(pump(ur, dw));
    tokio::spawn(pump(dr, uw));
    to_client.abort_handle()
}

/// Copies data and EOF from `from` to `to` until a close or an error, then closes `to`.
async fn pump<S>(mut from: ChannelReadHalf, to: ChannelWriteHalf<S>)
where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    while let Some(m) = from.wait().await {
        let r = match m {
            ChannelMsg::Data { data } => to.data_bytes(data).await,
            ChannelMsg::Eof => to.eof().await,
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if r.is_err() {
            break;
        }
    }
    let _ = to.close().await;
}
