//! `prismctl ui`: a one-time address that signs a browser in to the
//! admin's fleet status page, as whoever prismctl is to the admin (its
//! local socket, or mutual TLS with a certificate) and with that role. It
//! prints the address; it starts no browser.

use super::{
    Error, Global,
    client::call_failed,
    output::{out, structured},
};
use crate::pb::prism::admin::v1 as apb;

pub async fn ui(g: &Global) -> Result<(), Error> {
    let mut admin = g.admin.connect().await?;
    let opened = admin
        .api
        .open_ui_session(apb::OpenUiSessionRequest {})
        .await
        .map_err(|s| call_failed("opening a fleet status page session", s))?
        .into_inner();
    if let Some(text) = structured(g.output, &opened)? {
        out(&text);
        return Ok(());
    }
    out(&format!(
        "Open this address in a browser within 60 seconds; it works once:\n\n  {}\n\n\
         The page will know you as {}.\n",
        opened.login_url, opened.identity
    ));
    Ok(())
}
