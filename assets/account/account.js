// The account pages the service's mails link to: /account/verify-email and
// /account/reset-password. The link's token is read here, from the address, and sent only when
// the user submits the form: loading the page (as a mail scanner does) changes nothing.
// Everything the service answers is shown as text, never as HTML.
"use strict";

(function () {
  var form = document.getElementById("account-form");
  var status = document.getElementById("status");
  if (!form || !status) {
    return;
  }
  var fieldset = form.querySelector("fieldset");
  var button = form.querySelector("button[type=submit]");
  var page = form.getAttribute("data-page");

  // What each page sends, and what it says when the service accepts it.
  var pages = {
    "verify-email": {
      endpoint: "/api/v1/users/email/verify",
      busy: "Verifying your email address\u2026",
      body: function (token) {
        return { token: token };
      },
      success: function (user) {
        var email = document.createElement("strong");
        email.textContent = user && typeof user.email === "string" ? user.email : "";
        return paragraph("Your email address ", email, " is verified. You can close this page.");
      },
    },
    "reset-password": {
      endpoint: "/api/v1/users/password/reset",
      busy: "Changing your password\u2026",
      check: checkPasswords,
      body: function (token) {
        return { token: token, new_password: input("new-password").value };
      },
      success: function () {
        return paragraph("Your password has been changed. Log in with your new password.");
      },
    },
  };
  // How the service's field names read on the page.
  var fieldLabels = {
    token: "Link",
    new_password: "New password",
  };
  var fieldInputs = {
    new_password: "new-password",
  };

  var spec = pages[page];
  if (!spec) {
    return;
  }
  var token = (new URLSearchParams(window.location.search).get("token") || "").trim();
  if (!token) {
    show(
      "error",
      paragraph(
        "This link has no token: it is incomplete. Open the link from the email again, " +
          "or copy the whole address from the email into the address bar."
      )
    );
    return;
  }
  fieldset.disabled = false;

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (button.disabled) {
      return;
    }
    clearInvalid();
    if (spec.check && !spec.check()) {
      return;
    }
    send();
  });

  function send() {
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    show("info", paragraph(spec.busy));
    fetch(spec.endpoint, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json, application/problem+json",
      },
      body: JSON.stringify(spec.body(token)),
      credentials: "same-origin",
      cache: "no-store",
    })
      .then(function (response) {
        return readBody(response).then(function (body) {
          return { response: response, body: body };
        });
      })
      .then(
        function (answer) {
          done();
          if (answer.response.ok) {
            succeeded(answer.body);
          } else {
            failed(answer.response, answer.body);
          }
        },
        function () {
          // No answer, or one cut off: the network failed, not the service.
          done();
          failed(null, null);
        }
      );
  }

  function done() {
    button.disabled = false;
    form.removeAttribute("aria-busy");
  }

  // The body as JSON, or null (204, or not JSON).
  function readBody(response) {
    if (response.status === 204) {
      return Promise.resolve(null);
    }
    return response.text().then(function (text) {
      try {
        return JSON.parse(text);
      } catch (e) {
        return null;
      }
    });
  }

  function succeeded(body) {
    form.hidden = true;
    Array.prototype.forEach.call(form.querySelectorAll("input"), function (field) {
      field.value = "";
    });
    // The token is spent: take it out of the address bar (and the history).
    try {
      window.history.replaceState(null, "", window.location.pathname);
    } catch (e) {
      // Not fatal: the page has said what happened.
    }
    show("success", spec.success(body));
    focusWithStatus(status);
  }

  function failed(response, problem) {
    if (!response) {
      show("error", paragraph("The service could not be reached. Try again."));
      focusWithStatus(button);
      return;
    }
    var detail = problem && typeof problem.detail === "string" && problem.detail;
    if (!detail) {
      detail = "The service refused the request (" + response.status + "). Try again later.";
    }
    var nodes = [paragraph(detail)];
    var retry = response.headers.get("Retry-After");
    if ((response.status === 429 || response.status === 503) && retry && /^\d+$/.test(retry)) {
      nodes.push(paragraph("Try again in " + waitText(parseInt(retry, 10)) + "."));
    }
    var errors = problem && Array.isArray(problem.errors) ? problem.errors : [];
    var firstInvalid = null;
    if (errors.length) {
      var list = document.createElement("ul");
      errors.forEach(function (error) {
        if (!error || typeof error.message !== "string") {
          return;
        }
        var item = document.createElement("li");
        var field = typeof error.field === "string" ? error.field : "";
        item.textContent = field ? (fieldLabels[field] || field) + ": " + error.message : error.message;
        list.appendChild(item);
        var id = fieldInputs[field];
        if (id) {
          markInvalid(input(id));
          firstInvalid = firstInvalid || input(id);
        }
      });
      if (list.childNodes.length) {
        nodes.push(list);
      }
    }
    show.apply(null, ["error"].concat(nodes));
    focusWithStatus(firstInvalid || button);
  }

  function checkPasswords() {
    var password = input("new-password");
    var repeat = input("repeat-password");
    if (!password.value) {
      markInvalid(password);
      show("error", paragraph("Enter a new password."));
      focusWithStatus(password);
      return false;
    }
    if (password.value !== repeat.value) {
      markInvalid(repeat);
      show("error", paragraph("The two passwords do not match. Type the same new password twice."));
      focusWithStatus(repeat);
      return false;
    }
    return true;
  }

  function waitText(seconds) {
    if (seconds < 120) {
      return seconds === 1 ? "1 second" : seconds + " seconds";
    }
    return Math.ceil(seconds / 60) + " minutes";
  }

  function input(id) {
    return document.getElementById(id);
  }

  function markInvalid(element) {
    element.setAttribute("aria-invalid", "true");
  }

  function clearInvalid() {
    Array.prototype.forEach.call(form.querySelectorAll("[aria-invalid]"), function (element) {
      element.removeAttribute("aria-invalid");
    });
  }

  // A paragraph of these parts: strings (as text) and elements.
  function paragraph() {
    var p = document.createElement("p");
    Array.prototype.forEach.call(arguments, function (part) {
      p.appendChild(typeof part === "string" ? document.createTextNode(part) : part);
    });
    return p;
  }

  // Replaces what the status region says with these elements; `kind` (info, success or error)
  // picks the style.
  function show(kind) {
    status.className = "status status-" + kind;
    status.replaceChildren.apply(status, Array.prototype.slice.call(arguments, 1));
  }

  // Focuses `element` and keeps the status message in view too (on a phone it may be below).
  function focusWithStatus(element) {
    element.focus();
    status.scrollIntoView({ block: "nearest" });
  }
})();
