//! The web UI as a browser sees it: redirects shown rather than followed, sign-in with a key,
//! the CSRF token a page carries.

use super::Flowgate;

/// A client that shows redirects instead of following them.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Signs in with `key`; the session cookie (`name=value`).
pub async fn sign_in(gw: &Flowgate, key: &str) -> String {
    let response = browser()
        .post(format!("{}/signin", gw.url))
        .form(&[("key", key), ("next", "/runs")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "sign-in with {key}");
    assert_eq!(response.headers()["location"], "/runs");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token a page carries for its scripts and forms.
pub fn csrf_of(html: &str) -> String {
    let start = html
        .find(r#"name="csrf-token" content=""#)
        .expect("a CSRF token")
        + 27;
    html[start..].split('"').next().unwrap().to_string()
}
