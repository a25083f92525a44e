/**
 * `WWW-Authenticate` parsing, RFC 9110 §11.6.1 (formerly RFC 7235 §4.1):
 *
 * ```
 * WWW-Authenticate = #challenge
 * challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
 * auth-param       = token BWS "=" BWS ( token / quoted-string )
 * token68          = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
 * ```
 *
 * The list syntax (RFC 9110 §5.6.1) allows empty elements and optional whitespace, and a comma
 * separates both parameters and challenges: a comma followed by `token =` continues the current
 * challenge, anything else starts a new one.
 */

/** One challenge from a `WWW-Authenticate` header. */
export interface Challenge {
  /** Auth scheme, lower-cased: `"bearer"`, `"basic"`. */
  scheme: string;
  /** Auth params with lower-cased keys; a token68 credential is stored under `""`. */
  params: Record<string, string>;
}

// RFC 9110 §5.6.2 tchar.
const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_RE = /^[A-Za-z0-9\-._~+/]+=*/;

/**
 * Parses every challenge in a `WWW-Authenticate` header value. Tolerant: malformed pieces are
 * skipped rather than thrown, since the caller can only fall back to "no usable challenge".
 */
export function parseChallenges(header: string): Challenge[] {
  const p = new Parser(header);
  const out: Challenge[] = [];
  while (true) {
    p.skipListSeparators();
    if (p.done) break;
    const scheme = p.token();
    if (scheme === "") {
      p.skipToComma(); // Not a challenge: drop this list element.
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: Object.create(null) };
    out.push(challenge);
    if (!p.skipSpaces()) continue; // `Basic,` or end: a challenge without parameters.
    const t68 = p.token68();
    if (t68 !== undefined) {
      challenge.params[""] = t68;
      continue;
    }
    // #auth-param: keep reading while the next list element looks like `token =`.
    while (true) {
      p.skipListSeparators();
      if (!p.atParam()) break;
      const name = p.token().toLowerCase();
      p.skipSpaces();
      p.expect("=");
      p.skipSpaces();
      const value = p.value();
      // RFC 9110 §11.2: each parameter name MUST only occur once; keep the first.
      if (!(name in challenge.params)) challenge.params[name] = value;
      p.skipSpaces();
      if (!p.done && p.peek() !== ",") p.skipToComma();
    }
  }
  return out.map((c) => ({ scheme: c.scheme, params: { ...c.params } }));
}

/** Picks the challenge haul can answer: the first Bearer, else the first Basic. */
export function pickChallenge(challenges: Challenge[]): Challenge | undefined {
  return challenges.find((c) => c.scheme === "bearer") ??
    challenges.find((c) => c.scheme === "basic");
}

/**
 * A token scope for a repository (distribution token spec):
 * `bearerScope("a/b", ["pull", "push"])` → `"repository:a/b:pull,push"`. Duplicate actions
 * are dropped.
 *
 * @throws {RangeError} when the repository or an action is malformed, or no action is given.
 */
export function bearerScope(repository: string, actions: string[]): string {
  if (repository === "" || /[\s",]/.test(repository)) {
    throw new RangeError(`Invalid repository for a token scope: ${JSON.stringify(repository)}`);
  }
  if (actions.length === 0) throw new RangeError("A token scope needs at least one action");
  for (const a of actions) {
    if (!/^(?:[a-z]+|\*)$/.test(a)) {
      throw new RangeError(`Invalid action for a token scope: ${JSON.stringify(a)}`);
    }
  }
  return `repository:${repository}:${[...new Set(actions)].join(",")}`;
}

class Parser {
  #s: string;
  #i = 0;
  constructor(s: string) {
    this.#s = s;
  }
  get done(): boolean {
    return this.#i >= this.#s.length;
  }
  peek(): string {
    return this.#s[this.#i];
  }
  /** Skips SP / HTAB; true when something other than a comma or the end follows. */
  skipSpaces(): boolean {
    while (!this.done && (this.peek() === " " || this.peek() === "\t")) this.#i++;
    return !this.done && this.peek() !== ",";
  }
  skipListSeparators(): void {
    while (!this.done && /[ \t,]/.test(this.peek())) this.#i++;
  }
  skipToComma(): void {
    while (!this.done && this.peek() !== ",") {
      if (this.peek() === '"') this.quoted();
      else this.#i++;
    }
  }
  token(): string {
    const start = this.#i;
    while (!this.done && TCHAR.test(this.peek())) this.#i++;
    return this.#s.slice(start, this.#i);
  }
  expect(c: string): void {
    if (this.peek() === c) this.#i++;
  }
  /** A token68 only when it fills the element up to the next comma or the end. */
  token68(): string | undefined {
    const m = TOKEN68_RE.exec(this.#s.slice(this.#i));
    if (!m) return undefined;
    let j = this.#i + m[0].length;
    while (j < this.#s.length && (this.#s[j] === " " || this.#s[j] === "\t")) j++;
    if (j < this.#s.length && this.#s[j] !== ",") return undefined;
    this.#i = j;
    return m[0];
  }
  /** True when the input continues with `token BWS "="` (an auth-param, not a new scheme). */
  atParam(): boolean {
    let j = this.#i;
    while (j < this.#s.length && TCHAR.test(this.#s[j])) j++;
    if (j === this.#i) return false;
    while (j < this.#s.length && (this.#s[j] === " " || this.#s[j] === "\t")) j++;
    return this.#s[j] === "=";
  }
  /** A quoted-string, or a bare value up to the next comma or whitespace. */
  value(): string {
    if (this.peek() === '"') return this.quoted();
    // Bare values should be tokens, but some servers send `realm=https://x/token` unquoted.
    const start = this.#i;
    while (!this.done && !/[ \t,]/.test(this.peek())) this.#i++;
    return this.#s.slice(start, this.#i);
  }
  /** RFC 9110 §5.6.4 quoted-string with quoted-pair; an unterminated one runs to the end. */
  quoted(): string {
    this.#i++; // opening quote
    let out = "";
    while (!this.done) {
      const c = this.#s[this.#i++];
      if (c === '"') return out;
      if (c === "\\" && !this.done) out += this.#s[this.#i++];
      else out += c;
    }
    return out;
  }
}
