/* Users, API tokens and the audit log (admin only). */
(function () {
  "use strict";
  const { el, api, act, confirm, toast, form, ago, ApiError } = window.PyEdge;
  const ROLES = ["viewer", "operator", "admin"];
  const ROLE_HINT = "viewer reads; operator also runs operations and switches actuators; " +
    "admin also changes settings, users and tokens";
  const NAME_HINT = "1-64 letters, digits, '.', '_', '-', '@'";
  const AUDIT_PAGE = 25;
  const me = document.getElementById("users").dataset.me;

  function when(iso) {
    if (!iso) return el("span", { class: "muted" }, "—");
    return el("time", { datetime: iso, title: iso }, ago(iso));
  }

  /** An expiry: "in 3 d" ahead (PyEdge.ago only counts back), "expired …" once past. */
  function expiry(iso) {
    if (!iso) return el("span", { class: "muted" }, "never");
    const seconds = (Date.parse(iso) - Date.now()) / 1000;
    if (!(seconds > 0)) return el("time", { datetime: iso, title: iso, class: "bad" }, `expired ${ago(iso)}`);
    const [size, unit] = seconds < 3600 ? [60, "min"] : seconds < 86400 ? [3600, "h"] : [86400, "d"];
    return el("time", { datetime: iso, title: iso }, `in ${Math.max(1, Math.round(seconds / size))} ${unit}`);
  }

  function empty(tbody, columns, text) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "muted" }, text)));
  }

  /** The store's errors about a name come as 400/409 without field errors: put them at the
   *  name field, in words (a clash reads as SQLite's constraint otherwise). */
  function atName(exc, kind, name) {
    if (!(exc instanceof ApiError) || exc.errors || ![400, 409].includes(exc.status)) return exc;
    let text = exc.message;
    if (exc.status === 409 && /already exists/.test(text)) {
      text = `A ${kind} named "${name}" exists already.`;
    } else if (!/names are/.test(text)) {
      return exc;
    }
    return new ApiError(exc.status, text, { json: { name: [text] } });
  }

  // --- users ---------------------------------------------------------------------------------

  async function loadUsers() {
    const tbody = document.querySelector("#user-table tbody");
    try {
      const users = await api("GET", "/api/auth/users");
      tbody.replaceChildren(...users.map((user) => el("tr", { dataset: { user: user.name } },
        el("td", {}, el("strong", {}, user.name), user.name === me ? el("small", {}, " (you)") : null),
        el("td", {}, user.role),
        el("td", { class: "hide-narrow" }, when(user.created_at)),
        el("td", { class: "actions-cell" }, el("button", {
          type: "button", class: "danger", "aria-label": `Delete user ${user.name}`,
          onclick: (event) => deleteUser(event.currentTarget, user.name),
        }, "Delete")))));
      if (!users.length) empty(tbody, 4, "No users.");
    } catch (exc) {
      empty(tbody, 4, exc.message);
    }
  }

  async function deleteUser(button, name) {
    const self = name === me;
    const ok = await confirm(
      `Delete the user ${name}? ${self ? "You" : "They"} can no longer log in, and ` +
      `${self ? "your" : "their"} open sessions end at once. API tokens are separate and ` +
      "keep working.", "Delete user");
    if (!ok) return;
    await act(button, async () => {
      await api("DELETE", `/api/auth/users/${encodeURIComponent(name)}`);
      toast(`User ${name} deleted.`);
      if (self) {
        window.location.assign("/login");
        return;
      }
      await Promise.all([loadUsers(), loadAudit()]);
    });
  }

  const userForm = form({
    type: "object",
    required: ["name", "role", "password"],
    properties: {
      name: { type: "string", title: "Name", maxLength: 64, description: NAME_HINT },
      role: { type: "string", title: "Role", enum: ROLES, default: "viewer", description: ROLE_HINT },
      password: { type: "string", title: "Password", format: "password", maxLength: 1024,
        description: "at least 8 characters" },
    },
  }, {
    label: "Add user",
    async submit(values) {
      try {
        await api("POST", "/api/auth/users", values);
      } catch (exc) {
        throw atName(exc, "user", values.name);
      }
      toast(`User ${values.name} added as ${values.role}.`);
      userForm.reset();
      await Promise.all([loadUsers(), loadAudit()]);
    },
  });
  userForm.setAttribute("aria-label", "Add a user");
  userForm.querySelector('[name="name"]').setAttribute("autocomplete", "off");
  userForm.querySelector('[name="password"]').setAttribute("autocomplete", "new-password");
  document.getElementById("add-user").append(userForm);

  // --- tokens --------------------------------------------------------------------------------

  async function loadTokens() {
    const tbody = document.querySelector("#token-table tbody");
    try {
      const tokens = await api("GET", "/api/auth/tokens");
      tbody.replaceChildren(...tokens.map((token) => el("tr", { dataset: { token: token.name } },
        el("td", {}, el("strong", {}, token.name)),
        el("td", {}, token.role),
        el("td", { class: "hide-narrow" }, when(token.created_at)),
        el("td", {}, token.last_used_at ? when(token.last_used_at) : el("span", { class: "muted" }, "never")),
        el("td", { class: "hide-narrow" }, expiry(token.expires_at)),
        el("td", { class: "actions-cell" }, el("button", {
          type: "button", class: "danger", "aria-label": `Revoke token ${token.name}`,
          onclick: (event) => revokeToken(event.currentTarget, token.name),
        }, "Revoke")))));
      if (!tokens.length) empty(tbody, 6, "No tokens.");
    } catch (exc) {
      empty(tbody, 6, exc.message);
    }
  }

  async function revokeToken(button, name) {
    const ok = await confirm(
      `Revoke the API token ${name}? Every program that uses it is refused from now on.`,
      "Revoke token");
    if (!ok) return;
    await act(button, async () => {
      await api("DELETE", `/api/auth/tokens/${encodeURIComponent(name)}`);
      toast(`Token ${name} revoked.`);
      await Promise.all([loadTokens(), loadAudit()]);
    });
  }

  const reveal = document.getElementById("new-token");
  const revealValue = document.getElementById("new-token-value");

  function showToken(created) {
    document.getElementById("new-token-title").textContent =
      `New token ${created.name} (${created.role})`;
    revealValue.value = created.token;
    reveal.hidden = false;
    revealValue.focus();
    revealValue.select();
  }

  function hideToken() {
    // Gone from the page too: nothing keeps it once the admin has taken it.
    revealValue.value = "";
    reveal.hidden = true;
    tokenForm.querySelector('[name="name"]').focus();
  }

  async function copyToken() {
    revealValue.select();
    try {
      // The clipboard API needs a secure context; a device on plain http on the LAN is not.
      if (!navigator.clipboard || !window.isSecureContext) throw new Error("no clipboard");
      await navigator.clipboard.writeText(revealValue.value);
    } catch (exc) {
      if (!document.execCommand("copy")) {
        toast("Copy failed: the token is selected, copy it by hand.", "bad");
        return;
      }
    }
    toast("Token copied.");
  }

  document.getElementById("copy-token").addEventListener("click", copyToken);
  document.getElementById("hide-token").addEventListener("click", hideToken);

  const tokenForm = form({
    type: "object",
    required: ["name", "role"],
    properties: {
      name: { type: "string", title: "Name", maxLength: 64, example: "backup-script",
        description: `what uses it; ${NAME_HINT}` },
      role: { type: "string", title: "Role", enum: ROLES, default: "viewer", description: ROLE_HINT },
      // No minimum/maximum here: the API checks them, and "empty: never" says more.
      expires_days: { type: "number", title: "Expires after (days)", description: "empty: never" },
    },
  }, {
    label: "Create token",
    async submit(values) {
      let created;
      try {
        created = await api("POST", "/api/auth/tokens", values);
      } catch (exc) {
        throw atName(exc, "token", values.name);
      }
      tokenForm.reset();
      showToken(created);
      await Promise.all([loadTokens(), loadAudit()]);
    },
  });
  tokenForm.setAttribute("aria-label", "Create a token");
  tokenForm.querySelector('[name="name"]').setAttribute("autocomplete", "off");
  document.getElementById("add-token").append(tokenForm);

  // --- audit log -----------------------------------------------------------------------------

  const auditBody = document.querySelector("#audit-table tbody");
  const older = document.getElementById("audit-older");
  const count = document.getElementById("audit-count");
  let oldest = null;

  function auditRow(entry) {
    const failed = entry.status !== null && entry.status >= 400;
    return el("tr", { dataset: { id: entry.id } },
      el("td", {}, when(entry.ts)),
      el("td", {}, entry.actor),
      el("td", {}, el("code", {}, entry.action)),
      el("td", {}, el("code", {}, entry.target), entry.detail ? el("br") : null,
        entry.detail ? el("small", {}, entry.detail) : null),
      el("td", { class: failed ? "bad" : "" }, entry.status ?? "—"),
      el("td", { class: "hide-narrow" }, entry.remote || "—"));
  }

  /** The newest page (fresh), or with `more` the page before the oldest entry shown. */
  async function loadAudit(more) {
    try {
      const query = { limit: AUDIT_PAGE };
      if (more && oldest !== null) query.before = oldest;
      const entries = await api("GET", "/api/audit", undefined, query);
      if (!more) auditBody.replaceChildren();
      auditBody.append(...entries.map(auditRow));
      if (entries.length) oldest = entries[entries.length - 1].id;
      if (!auditBody.children.length) empty(auditBody, 6, "Nothing recorded yet.");
      // A short page is the end of the log.
      const hadFocus = document.activeElement === older;
      older.hidden = entries.length < AUDIT_PAGE;
      if (older.hidden && hadFocus) document.getElementById("audit-newest").focus();
      const shown = auditBody.querySelectorAll("tr[data-id]").length;
      count.textContent = `${shown} entr${shown === 1 ? "y" : "ies"} shown` +
        (older.hidden && shown ? " (the whole log)" : "");
    } catch (exc) {
      if (!more) empty(auditBody, 6, exc.message);
      else toast(exc.message, "bad");
    }
  }

  older.addEventListener("click", (event) => act(event.currentTarget, () => loadAudit(true)));
  document.getElementById("audit-newest").addEventListener("click",
    (event) => act(event.currentTarget, () => loadAudit(false)));

  Promise.all([loadUsers(), loadTokens(), loadAudit(false)]).then(() => {
    // The overview links here with #audit: the tables above it have grown meanwhile.
    if (window.location.hash === "#audit") document.getElementById("audit").scrollIntoView();
  });
})();
