//! The account pages the mails link to (`/account/verify-email`, `/account/reset-password`) and
//! their script and style: served with the right types and headers, from this origin only, with
//! nothing inline for the policy to refuse, and with nothing of the query string in them.

use super::helpers::{Reply, TestApp};

const PAGES: &[&str] = &["/account/verify-email", "/account/reset-password"];
const ASSETS: &[(&str, &str)] = &[
    ("/account/account.js", "text/javascript; charset=utf-8"),
    ("/account/account.css", "text/css; charset=utf-8"),
];
const POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn get(app: &TestApp, path: &str) -> Reply {
    app.send(warp::test::request().path(path)).await
}

fn text(r: &Reply) -> String {
    String::from_utf8(r.body.clone()).expect("UTF-8")
}

#[tokio::test]
async fn the_pages_are_html_never_cached_never_referred_and_under_the_policy() {
    let app = TestApp::new().await;
    for page in PAGES {
        let r = get(&app, page).await;
        r.assert_status(200);
        assert_eq!(
            r.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{page}"
        );
        assert_eq!(r.header("content-security-policy"), Some(POLICY), "{page}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{page}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{page}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn the_script_and_style_have_their_types_and_the_policy() {
    let app = TestApp::new().await;
    for (path, content_type) in ASSETS {
        let r = get(&app, path).await;
        r.assert_status(200);
        assert_eq!(r.header("content-type"), Some(*content_type), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(POLICY), "{path}");
        assert!(
            r.header("cache-control")
                .is_some_and(|c| c.starts_with("public, max-age=")),
            "{path}: {:?}",
            r.header("cache-control")
        );
        assert!(r.body.len() > 100, "{path}");
    }
}

#[tokio::test]
async fn head_answers_like_get_and_other_methods_get_405_with_allow() {
    let app = TestApp::new().await;
    for path in PAGES.iter().chain(ASSETS.iter().map(|(p, _)| p)) {
        let got = get(&app, path).await;
        let head = app
            .send(warp::test::request().method("HEAD").path(path))
            .await;
        head.assert_status(200);
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(head.header("content-type"), got.header("content-type"));
        assert_eq!(
            head.header("content-security-policy"),
            got.header("content-security-policy")
        );
        assert_eq!(
            head.header("content-length"),
            Some(got.body.len().to_string().as_str()),
            "{path}"
        );
        for method in ["POST", "PUT", "DELETE"] {
            let r = app
                .send(warp::test::request().method(method).path(path))
                .await;
            r.problem(405);
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn a_token_in_the_query_is_never_put_into_the_page() {
    let app = TestApp::new().await;
    for page in PAGES {
        let plain = get(&app, page).await;
        let r = get(
            &app,
            &format!("{page}?token=%3Cscript%3Ealert(1)%3C%2Fscript%3Enot-echoed-marker"),
        )
        .await;
        r.assert_status(200);
        let html = text(&r);
        assert!(!html.contains("<script>"), "{page}");
        assert!(!html.contains("alert(1)"), "{page}");
        assert!(!html.contains("not-echoed-marker"), "{page}");
        // The page is a static file: the query changes nothing in it.
        assert_eq!(r.body, plain.body, "{page}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    }
}

/// The values of `attribute="…"` in `html`, in order.
fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let needle = format!(" {attribute}=\"");
    html.split(needle.as_str())
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect()
}

#[tokio::test]
async fn the_pages_load_only_their_own_script_and_style_and_inline_nothing() {
    let app = TestApp::new().await;
    for page in PAGES {
        let html = text(&get(&app, page).await);
        let lower = html.to_ascii_lowercase();

        let mut referenced = attribute_values(&html, "src");
        referenced.extend(attribute_values(&html, "href"));
        referenced.sort_unstable();
        assert_eq!(
            referenced,
            ["/account/account.css", "/account/account.js"],
            "{page}"
        );
        assert!(
            !lower.contains("http://") && !lower.contains("https://") && !lower.contains("//"),
            "{page} names another origin"
        );
        for reference in &referenced {
            get(&app, reference).await.assert_status(200);
        }

        // Nothing the policy would refuse: no style attribute or element, no inline script, no
        // inline event handler.
        assert!(!lower.contains("style="), "{page}");
        assert!(!lower.contains("<style"), "{page}");
        assert!(!lower.contains("javascript:"), "{page}");
        assert!(
            !lower
                .split_ascii_whitespace()
                .any(|w| w.starts_with("on") && w.contains('=')),
            "{page} has an inline event handler"
        );
        let scripts: Vec<&str> = lower.split("<script").skip(1).collect();
        assert_eq!(scripts.len(), 1, "{page}");
        for script in scripts {
            let (tag, rest) = script.split_once('>').unwrap();
            assert!(tag.contains("src=\"/account/account.js\""), "{page}: {tag}");
            assert!(
                rest.starts_with("</script>"),
                "{page} has an inline script body"
            );
        }
    }
}

#[tokio::test]
async fn the_pages_are_accessible_and_say_they_need_javascript() {
    let app = TestApp::new().await;
    for page in PAGES {
        let html = text(&get(&app, page).await);
        assert!(html.starts_with("<!DOCTYPE html>"), "{page}");
        assert!(html.contains("<html lang=\"en\">"), "{page}");
        assert!(html.contains("<meta charset=\"utf-8\">"), "{page}");
        assert!(
            html.contains(
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            ),
            "{page}"
        );
        assert!(html.contains("aria-live=\"polite\""), "{page}");
        assert!(html.contains("<noscript>"), "{page}");
        assert!(html.contains("needs JavaScript"), "{page}");
        // The form stays disabled until the script has found the token.
        assert!(html.contains("<fieldset disabled>"), "{page}");
        // Every input has a label tied to it.
        let labelled = attribute_values(&html, "for");
        for input in html.split("<input").skip(1) {
            let id = attribute_values(input.split('>').next().unwrap(), "id");
            assert_eq!(id.len(), 1, "{page}: an input without an id");
            assert!(labelled.contains(&id[0]), "{page}: no label for {}", id[0]);
        }
    }
    let verify = text(&get(&app, "/account/verify-email").await);
    assert!(verify.contains(">Verify my email address</button>"));
    assert!(!verify.contains("<input"));
    let reset = text(&get(&app, "/account/reset-password").await);
    assert!(reset.contains(">New password</label>"));
    assert!(reset.contains(">Repeat the new password</label>"));
    assert_eq!(
        reset.matches("type=\"password\"").count(),
        2,
        "two password fields"
    );
    assert_eq!(reset.matches("autocomplete=\"new-password\"").count(), 2);
}

#[tokio::test]
async fn the_script_writes_text_only_and_calls_only_this_origin() {
    let app = TestApp::new().await;
    let script = text(&get(&app, "/account/account.js").await);
    for refused in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!script.contains(refused), "account.js uses {refused}");
    }
    assert!(!script.contains("http://") && !script.contains("https://"));
    assert!(script.contains("\"/api/v1/users/email/verify\""));
    assert!(script.contains("\"/api/v1/users/password/reset\""));
    assert!(script.contains("history.replaceState"));
    let style = text(&get(&app, "/account/account.css").await);
    assert!(!style.contains("@import") && !style.contains("url("));
    assert!(style.contains(":focus-visible"));
}
