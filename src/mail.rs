//! Mail: the verification and password-reset mails, their one-time tokens, and the worker that
//! delivers the outbox.
//!
//! A handler that sends mail asks the store to queue it (the outbox), in the transaction of the
//! change that asks for it, and wakes the worker. The worker ([`Mailer::run`], a task started by
//! `main`) claims due mails one at a time; for each it makes the one-time token, stores its
//! SHA-256 as the user's only live token of that kind, and sends the mail over SMTP with `lettre`.
//! A failed attempt is tried again later with a growing back-off, so a down SMTP server delays
//! mail and loses none; a mail the server refuses for good is dropped, with a warning.
//! Without `SMTP_URL` the worker writes each mail's recipient, subject and link to the log.
//!
//! The token exists in clear only in the worker's memory and in the mail: no table holds a
//! usable link. A link's lifetime runs from when its mail is sent.

use std::time::Duration;

use lettre::message::header::ContentTransferEncoding;
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::Notify;

use crate::config::{MailSettings, SmtpTls};
use crate::store::{MailKind, MailToken, OutboxMail, Store, StoreError};
use crate::tokens::{self, OpaqueToken};

/// At most this many mails of one kind to one user per hour (further requests send nothing).
pub const MAILS_PER_HOUR: u32 = 3;
/// A claimed mail is not claimed again (by this worker or another replica's) for this long.
const LEASE_SECONDS: u64 = 120;
/// How often the worker looks for due mail without being woken (mail queued by another
/// replica, retries).
const POLL: Duration = Duration::from_secs(5);
/// Forgot-password lookups running after their answer at once; more are dropped (and logged),
/// so a flood cannot queue unbounded work on the database.
const BACKGROUND_SLOTS: usize = 64;
/// The longest wait between two attempts at one mail.
const MAX_BACKOFF_SECONDS: u64 = 600;
/// How long one SMTP conversation may take, connection to QUIT (well under the lease).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the mail transport could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("SMTP_URL: {0}")]
pub struct MailError(String);

/// How mail leaves the service.
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// No `SMTP_URL`: mails are written to the log.
    Log,
}

/// The mail side of the service: links, tokens, messages and delivery.
pub struct Mailer {
    settings: MailSettings,
    transport: Transport,
    wake: Notify,
    /// Set at shutdown: the worker finishes the mail it is sending and stops, so that no claim
    /// is left to wait for its lease.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Bounds the work requests leave to run after their answer (forgot-password lookups).
    background: std::sync::Arc<tokio::sync::Semaphore>,
    /// Delivery attempts by outcome, for the metrics.
    outcomes: crate::metrics::MailOutcomes,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("smtp", &self.settings.smtp)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(settings: &MailSettings) -> Result<Self, MailError> {
        let transport = match &settings.smtp {
            None => Transport::Log,
            Some(smtp) => {
                let tls_parameters = || {
                    TlsParameters::new(smtp.host.clone())
                        .map_err(|e| MailError(format!("TLS for {}: {e}", smtp.host)))
                };
                let tls = match smtp.tls {
                    SmtpTls::None => Tls::None,
                    SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters()?),
                    SmtpTls::Required => Tls::Required(tls_parameters()?),
                    SmtpTls::Wrapper => Tls::Wrapper(tls_parameters()?),
                };
                let mut builder =
                    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
                        .port(smtp.port)
                        .tls(tls)
                        .timeout(Some(SMTP_TIMEOUT));
                if let Some((user, password)) = &smtp.credentials {
                    builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
                }
                Transport::Smtp(builder.build())
            }
        };
        Ok(Self {
            settings: settings.clone(),
            transport,
            wake: Notify::new(),
            stopping: tokio::sync::watch::Sender::new(false),
            background: std::sync::Arc::new(tokio::sync::Semaphore::new(BACKGROUND_SLOTS)),
            outcomes: crate::metrics::MailOutcomes::new(),
        })
    }

    /// Delivery attempts by outcome (for the metrics).
    pub fn outcomes(&self) -> &crate::metrics::MailOutcomes {
        &self.outcomes
    }

    /// Whether mail is delivered (an SMTP server is configured) rather than logged.
    pub fn delivers(&self) -> bool {
        matches!(self.transport, Transport::Smtp(_))
    }

    /// A new one-time token of `kind` (to mail) and what the store keeps of it (its hash and
    /// lifetime, from the settings).
    pub fn token(&self, kind: MailKind) -> (String, MailToken) {
        let token = OpaqueToken::generate();
        let now = tokens::now_seconds();
        let stored = MailToken {
            kind,
            hash: token.hash,
            now,
            expires_at: now + self.lifetime_seconds(kind),
        };
        (token.token, stored)
    }

    /// The hash a presented token is stored under; `None` for anything that cannot be a token.
    pub fn hash_of(presented: &str) -> Option<[u8; 32]> {
        OpaqueToken::parse(presented).map(|t| t.hash)
    }

    /// A slot for work that runs after the request's answer, if one is free.
    pub fn background_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.background.clone().try_acquire_owned().ok()
    }

    /// Asks the worker to stop once the mail it is sending is done (at shutdown).
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Wakes the worker: a mail was just queued.
    pub fn queued(&self) {
        self.wake.notify_one();
    }

    fn lifetime_seconds(&self, kind: MailKind) -> u64 {
        match kind {
            MailKind::VerifyEmail => u64::from(self.settings.verify_hours) * 3600,
            MailKind::ResetPassword => u64::from(self.settings.reset_minutes) * 60,
        }
    }

    /// The link a mail carries.
    pub fn link(&self, kind: MailKind, token: &str) -> String {
        let template = match kind {
            MailKind::VerifyEmail => &self.settings.verify_email_url,
            MailKind::ResetPassword => &self.settings.reset_password_url,
        };
        // Tokens are base64url: nothing in them needs escaping in a URL.
        template.replace("{token}", token)
    }

    /// The subject, plain text and HTML of a mail.
    fn render(&self, kind: MailKind, link: &str) -> (&'static str, String, String) {
        let lifetime = lifetime_words(self.lifetime_seconds(kind));
        let (subject, lead, end) = match kind {
            MailKind::VerifyEmail => (
                "Verify your email address",
                "An account was made with this email address. To confirm that the address is \
                 yours, open this link:",
                format!(
                    "The link works once and expires in {lifetime}. If you did not make an \
                     account, ignore this mail."
                ),
            ),
            MailKind::ResetPassword => (
                "Reset your password",
                "Someone asked to reset the password of the account with this email address. \
                 To choose a new password, open this link:",
                format!(
                    "The link works once and expires in {lifetime}. Setting a new password logs \
                     out every device signed in to the account. If you did not ask for this, \
                     ignore this mail: your password stays as it is."
                ),
            ),
        };
        // Wrapped, the link on a line of its own: readable, and copyable, as it arrives.
        let text = format!("Hello,\n\n{}\n\n{link}\n\n{}\n", wrap(lead), wrap(&end));
        let link_html = escape_html(link);
        let html = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{subject}</title></head>\
             <body><p>Hello,</p><p>{lead}</p><p><a href=\"{link_html}\">{link_html}</a></p>\
             <p>{end}</p></body></html>\n",
            lead = escape_html(lead),
            end = escape_html(&end),
        );
        (subject, text, html)
    }

    fn message(&self, mail: &OutboxMail, link: &str) -> Result<Message, String> {
        // (Built per attempt: the token, and so the link, is new each time.)
        let to: Mailbox = mail
            .recipient
            .parse()
            .map_err(|e| format!("the recipient is not a mailbox lettre accepts: {e}"))?;
        let (subject, text, html) = self.render(mail.kind, link);
        Message::builder()
            .from(self.settings.from.clone())
            .to(to)
            .subject(subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(plain_body(text)))
                    .singlepart(SinglePart::html(html)),
            )
            .map_err(|e| format!("building the message: {e}"))
    }

    /// The worker: delivers due mail until [`stop`](Self::stop) is called (at shutdown), then
    /// returns after the mail it is sending. A mail claimed by a process that died meanwhile is
    /// claimed again once its lease is over, by this or another replica.
    pub async fn run(&self, store: Store) {
        let mut stopping = self.stopping.subscribe();
        let mut wait = POLL;
        while !*stopping.borrow() {
            match store.claim_mail(tokens::now_seconds(), LEASE_SECONDS).await {
                Ok(Some(mail)) => {
                    if let Some(retry) = self.deliver(&store, mail).await {
                        wait = wait.min(retry);
                    }
                    // The next due mail at once.
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "the mail outbox could not be read"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stopping.changed() => {}
            }
            wait = POLL;
        }
    }

    /// One attempt at one claimed mail; when it failed and stays queued, how long until it is
    /// due again.
    async fn deliver(&self, store: &Store, mail: OutboxMail) -> Option<Duration> {
        let now = tokens::now_seconds();
        let lifetime = self.lifetime_seconds(mail.kind);
        let moot = if mail.kind == MailKind::VerifyEmail && mail.email_verified {
            Some("the email is verified already".to_owned())
        } else if now.saturating_sub(u64::try_from(mail.created_at).unwrap_or(0)) > lifetime {
            Some("it was queued longer than its link would live".to_owned())
        } else {
            None
        };
        if let Some(reason) = moot {
            tracing::warn!(mail_id = mail.id, kind = mail.kind.as_str(), reason = %reason, "queued mail dropped");
            return self.record(store.mail_dropped(&mail, now, reason).await, &mail, None);
        }
        let (token, stored) = self.token(mail.kind);
        match store.issue_mail_token(&mail, stored).await {
            Ok(true) => {}
            // Another worker took this mail over (its lease had run out): it sends it.
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(mail_id = mail.id, error = %e, "the mail's token could not be stored");
                return None;
            }
        }
        let link = self.link(mail.kind, &token);
        let result = match &self.transport {
            Transport::Log => {
                let (subject, _, _) = self.render(mail.kind, &link);
                tracing::info!(
                    to = %mail.recipient,
                    subject,
                    link = %link,
                    "mail not delivered (no SMTP_URL): written here instead"
                );
                Ok(())
            }
            Transport::Smtp(smtp) => match self.message(&mail, &link) {
                Ok(message) => match tokio::time::timeout(SMTP_TIMEOUT, smtp.send(message)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(Failure {
                        permanent: e.is_permanent(),
                        error: e.to_string(),
                    }),
                    Err(_) => Err(Failure {
                        permanent: false,
                        error: format!("no answer within {} s", SMTP_TIMEOUT.as_secs()),
                    }),
                },
                Err(error) => Err(Failure {
                    permanent: true,
                    error,
                }),
            },
        };
        let now = tokens::now_seconds();
        match result {
            Ok(()) => {
                if self.delivers() {
                    self.outcomes.sent();
                    tracing::info!(mail_id = mail.id, kind = mail.kind.as_str(), "mail sent");
                }
                self.record(store.mail_sent(&mail, now).await, &mail, None)
            }
            Err(Failure {
                permanent: true,
                error,
            }) => {
                self.outcomes.failed();
                tracing::warn!(
                    mail_id = mail.id,
                    kind = mail.kind.as_str(),
                    error = %error,
                    "mail refused for good; dropped"
                );
                self.record(store.mail_dropped(&mail, now, error).await, &mail, None)
            }
            Err(Failure { error, .. }) => {
                self.outcomes.failed();
                let backoff = backoff_seconds(mail.attempt.saturating_sub(1));
                tracing::warn!(
                    mail_id = mail.id,
                    kind = mail.kind.as_str(),
                    attempt = mail.attempt,
                    retry_in_s = backoff,
                    error = %error,
                    "mail not sent; it stays queued"
                );
                let retry = Duration::from_secs(backoff);
                self.record(
                    store.mail_failed(&mail, now + backoff, error).await,
                    &mail,
                    Some(retry),
                )
            }
        }
    }

    /// Logs a failure to record an attempt's outcome (the lease then brings the mail back: a
    /// mail sent and not marked may go out twice).
    fn record(
        &self,
        outcome: Result<(), StoreError>,
        mail: &OutboxMail,
        retry: Option<Duration>,
    ) -> Option<Duration> {
        if let Err(e) = outcome {
            tracing::warn!(mail_id = mail.id, error = %e, "the outbox could not be updated");
        }
        retry
    }
}

/// A failed attempt: whether the SMTP server refused it for good (a 5xx), and why.
struct Failure {
    permanent: bool,
    error: String,
}

/// The wait after `attempts` failed attempts: 2 s, 4 s, 8 s, … up to ten minutes.
fn backoff_seconds(attempts: u32) -> u64 {
    2u64.saturating_pow(attempts.saturating_add(1))
        .min(MAX_BACKOFF_SECONDS)
}

/// The plain-text part as 7-bit text when it is ASCII with lines within RFC 5322's 998
/// characters (lettre would pick quoted-printable for any line over 76, which splits the link
/// with soft breaks for whoever reads the raw mail); otherwise lettre's choice.
fn plain_body(text: String) -> Body {
    if text.is_ascii() && !text.contains(['\0', '\r']) && text.lines().all(|l| l.len() <= 998) {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    } else {
        Body::new(text)
    }
}

/// Words wrapped at 72 columns.
fn wrap(paragraph: &str) -> String {
    let mut out = String::with_capacity(paragraph.len() + 8);
    let mut column = 0;
    for word in paragraph.split_whitespace() {
        if column > 0 && column + 1 + word.len() > 72 {
            out.push('\n');
            column = 0;
        } else if column > 0 {
            out.push(' ');
            column += 1;
        }
        out.push_str(word);
        column += word.len();
    }
    out
}

/// "30 minutes", "24 hours", "1 hour".
fn lifetime_words(seconds: u64) -> String {
    let (n, unit) = if seconds.is_multiple_of(3600) {
        (seconds / 3600, "hour")
    } else {
        (seconds / 60, "minute")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer(pairs: &[(&str, &str)]) -> Mailer {
        let config = crate::config::Config::from_vars(pairs.iter().copied()).unwrap();
        Mailer::new(&config.mail).unwrap()
    }

    #[test]
    fn links_follow_public_url_or_the_templates() {
        let m = mailer(&[("PUBLIC_URL", "https://auth.example.com/")]);
        assert_eq!(
            m.link(MailKind::VerifyEmail, "abc"),
            "https://auth.example.com/account/verify-email?token=abc"
        );
        assert_eq!(
            m.link(MailKind::ResetPassword, "abc"),
            "https://auth.example.com/account/reset-password?token=abc"
        );
        let m = mailer(&[(
            "RESET_PASSWORD_URL",
            "https://app.example.com/reset/{token}",
        )]);
        assert_eq!(
            m.link(MailKind::ResetPassword, "xyz"),
            "https://app.example.com/reset/xyz"
        );
    }

    #[test]
    fn tokens_have_256_bits_and_their_lifetime() {
        let m = mailer(&[("PASSWORD_RESET_EXPIRE_MINUTES", "45")]);
        let (a, stored) = m.token(MailKind::ResetPassword);
        let (b, _) = m.token(MailKind::ResetPassword);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(stored.expires_at - stored.now, 45 * 60);
        assert_eq!(Mailer::hash_of(&a), Some(stored.hash));
        assert_eq!(Mailer::hash_of("not a token"), None);
        let (_, v) = m.token(MailKind::VerifyEmail);
        assert_eq!(v.expires_at - v.now, 24 * 3600);
    }

    #[test]
    fn both_parts_carry_the_link_and_the_html_is_escaped() {
        let m = mailer(&[(
            "VERIFY_EMAIL_URL",
            "https://app.example.com/v?a=1&token={token}",
        )]);
        let link = m.link(MailKind::VerifyEmail, "tok");
        let (subject, text, html) = m.render(MailKind::VerifyEmail, &link);
        assert_eq!(subject, "Verify your email address");
        assert!(text.contains("https://app.example.com/v?a=1&token=tok"));
        assert!(text.contains("24 hours"));
        assert!(html.contains("href=\"https://app.example.com/v?a=1&amp;token=tok\""));
        let (_, text, _) = m.render(MailKind::ResetPassword, "L");
        assert!(text.contains("30 minutes"));
        assert!(text.lines().all(|l| l.len() <= 72), "{text}");
        assert!(
            text.lines().any(|l| l == "L"),
            "the link on a line of its own"
        );
    }

    #[test]
    fn back_off_grows_and_is_capped() {
        assert_eq!(backoff_seconds(0), 2);
        assert_eq!(backoff_seconds(1), 4);
        assert_eq!(backoff_seconds(5), 64);
        assert_eq!(backoff_seconds(40), MAX_BACKOFF_SECONDS);
    }
}
