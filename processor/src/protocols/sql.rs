//! SQL text helpers for the database protocols: `db.query.text` with every literal replaced
//! by `?` ([`sanitize`]), and the best-effort `db.operation.name` ([`operation`]) and
//! `db.collection.name` ([`collection`]) read from a statement's text.
//!
//! All three run over one small lexer that knows where literals, quoted identifiers and
//! comments begin and end; they never parse SQL. The text they see may be cut short (capture
//! keeps only the first bytes of a message) or not SQL at all, so an unterminated literal runs
//! to the end of the text (and becomes `?`), and every result is bounded. Sanitizing errs
//! towards hiding: what the lexer cannot place is a literal, never shown.

/// Longest [`sanitize`] output kept, in bytes, before [`TRUNCATED`] is appended.
pub const MAX_SANITIZED_LEN: usize = 2048;
/// Appended to a sanitized text cut at [`MAX_SANITIZED_LEN`].
pub const TRUNCATED: &str = "…";
/// Longest table name [`collection`] returns (PostgreSQL names are at most 63 bytes; this
/// leaves room for a database and schema prefix).
pub const MAX_COLLECTION_LEN: usize = 192;

/// Whose rules decide what a quote and a backslash mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// PostgreSQL with `standard_conforming_strings` on (the default since 9.1): a backslash
    /// escapes only inside `E'…'`, `"…"` is an identifier, `/* */` comments nest.
    #[default]
    Postgres,
    /// MySQL / MariaDB defaults: a backslash escapes inside both quotes, `"…"` is a string,
    /// `` `…` `` an identifier, `#` starts a comment.
    MySql,
}

/// `sql` with every literal replaced by `?`, using PostgreSQL's lexical rules.
///
/// Replaced: single-quoted strings (also `E'…'`, `B'…'`, `X'…'`, `N'…'`, `U&'…'`),
/// dollar-quoted bodies (`$$…$$`, `$tag$…$tag$`) and numbers (decimal, exponent, hex, binary,
/// octal; digits inside identifiers stay). Kept: keywords (`TRUE`, `FALSE`, `NULL` included),
/// identifiers (quoted ones as written), operators and `$1` parameters. Comments are removed
/// and every run of whitespace becomes one space. The result is cut at [`MAX_SANITIZED_LEN`]
/// bytes and then ends with [`TRUNCATED`].
pub fn sanitize(sql: &str) -> String {
    sanitize_with(sql, Dialect::Postgres)
}

/// [`sanitize`] with the given dialect's quoting rules.
pub fn sanitize_with(sql: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(sql.len().min(MAX_SANITIZED_LEN) + TRUNCATED.len());
    let mut space = false;
    for tok in Lexer::new(sql, dialect) {
        let text = match tok {
            Tok::Space => {
                space = !out.is_empty();
                continue;
            }
            Tok::Literal => "?",
            Tok::Word(t) | Tok::Quoted(t) | Tok::Param(t) | Tok::Punct(t) => t,
        };
        if space {
            out.push(' ');
            space = false;
        }
        out.push_str(text);
        if out.len() > MAX_SANITIZED_LEN {
            let mut cut = MAX_SANITIZED_LEN;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str(TRUNCATED);
            return out;
        }
    }
    out
}

/// Statement keywords [`operation`] reports (PostgreSQL's and MySQL's commands). A first word
/// outside this list gives None: the name is a metric attribute, and text that is not SQL
/// (or a misparse) must not add values to it.
const OPERATIONS: &[&str] = &[
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DESCRIBE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "FLUSH",
    "GRANT",
    "HANDLER",
    "IMPORT",
    "INSERT",
    "KILL",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "OPTIMIZE",
    "PREPARE",
    "REASSIGN",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPAIR",
    "REPLACE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SECURITY",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UNLOCK",
    "UPDATE",
    "USE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// Keywords that can follow a `WITH` clause as the statement it qualifies.
const WITH_BODIES: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE",
];

/// Tokens looked at past a `WITH` before giving up (keeps [`operation`] cheap on long text).
const MAX_WITH_SCAN: usize = 4096;

/// The statement's first keyword, uppercased: `SELECT`, `INSERT`, `BEGIN`, … For
/// `WITH … SELECT` the keyword of the statement the `WITH` qualifies. Of a multi-statement
/// text, the first statement's. None when the text does not start with a known statement
/// keyword (see [`OPERATIONS`]).
pub fn operation(sql: &str) -> Option<String> {
    operation_with(sql, Dialect::Postgres)
}

/// [`operation`] with the given dialect's lexical rules.
pub fn operation_with(sql: &str, dialect: Dialect) -> Option<String> {
    let mut toks = Lexer::new(sql, dialect).filter(|t| *t != Tok::Space);
    let first = loop {
        match toks.next()? {
            // `(SELECT …) UNION (SELECT …)`
            Tok::Punct("(") => continue,
            Tok::Word(w) => break w,
            _ => return None,
        }
    };
    let op = known(first, OPERATIONS)?;
    if op != "WITH" {
        return Some(op.to_string());
    }
    let mut depth = 0usize;
    for tok in toks.take(MAX_WITH_SCAN) {
        match tok {
            Tok::Punct("(") => depth += 1,
            Tok::Punct(")") => depth = depth.saturating_sub(1),
            Tok::Punct(";") if depth == 0 => return None,
            Tok::Word(w) if depth == 0 => {
                if let Some(body) = known(w, WITH_BODIES) {
                    return Some(body.to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// The table a statement works on, best effort: `SELECT … FROM t`, `INSERT INTO t`,
/// `UPDATE t`, `DELETE FROM t`, `CREATE|DROP|ALTER|TRUNCATE TABLE t`, `COPY t`, `MERGE INTO
/// t`. Schema-qualified names are kept as written; quoted parts lose their quotes
/// (`public."Order"` → `public.Order`). The first table when there are several (a join), as
/// the semantic conventions ask. None when unsure: a subquery or function after `FROM`, a
/// `WITH` statement, anything else.
pub fn collection(sql: &str) -> Option<String> {
    collection_with(sql, Dialect::Postgres)
}

/// [`collection`] with the given dialect's lexical rules.
pub fn collection_with(sql: &str, dialect: Dialect) -> Option<String> {
    let mut toks = Lexer::new(sql, dialect)
        .filter(|t| *t != Tok::Space)
        .take(MAX_WITH_SCAN)
        .peekable();
    let first = loop {
        match toks.next()? {
            Tok::Punct("(") => continue,
            Tok::Word(w) => break w,
            _ => return None,
        }
    };
    let toks = &mut toks;
    match known(first, OPERATIONS)? {
        "SELECT" => {
            let mut depth = 0usize;
            loop {
                match toks.next()? {
                    Tok::Punct("(") => depth += 1,
                    Tok::Punct(")") => depth = depth.saturating_sub(1),
                    Tok::Punct(";") if depth == 0 => return None,
                    Tok::Word(w) if depth == 0 && w.eq_ignore_ascii_case("FROM") => break,
                    _ => {}
                }
            }
            skip_words(toks, &["ONLY"]);
            table_name(toks, false)
        }
        "INSERT" | "REPLACE" => {
            skip_words(
                toks,
                &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
            );
            table_name(toks, true)
        }
        "UPDATE" => {
            skip_words(toks, &["ONLY", "LOW_PRIORITY", "IGNORE"]);
            table_name(toks, true)
        }
        "DELETE" => {
            skip_words(toks, &["LOW_PRIORITY", "QUICK", "IGNORE"]);
            expect_word(toks, "FROM")?;
            skip_words(toks, &["ONLY"]);
            table_name(toks, true)
        }
        "CREATE" => {
            skip_words(toks, &["GLOBAL", "LOCAL", "TEMP", "TEMPORARY", "UNLOGGED"]);
            expect_word(toks, "TABLE")?;
            skip_if_exists(toks);
            table_name(toks, true)
        }
        "DROP" | "ALTER" => {
            expect_word(toks, "TABLE")?;
            skip_if_exists(toks);
            skip_words(toks, &["ONLY"]);
            table_name(toks, true)
        }
        "TRUNCATE" | "LOCK" => {
            skip_words(toks, &["TABLE", "ONLY"]);
            table_name(toks, true)
        }
        "COPY" => table_name(toks, true),
        "MERGE" => {
            expect_word(toks, "INTO")?;
            skip_words(toks, &["ONLY"]);
            table_name(toks, true)
        }
        _ => None,
    }
}

type Toks<I> = std::iter::Peekable<I>;

/// `word` uppercased if it is one of `list` (compared without case).
fn known(word: &str, list: &[&'static str]) -> Option<&'static str> {
    list.iter().copied().find(|k| k.eq_ignore_ascii_case(word))
}

fn skip_words<'a, I: Iterator<Item = Tok<'a>>>(toks: &mut Toks<I>, words: &[&str]) {
    while let Some(Tok::Word(w)) = toks.peek() {
        if !words.iter().any(|k| k.eq_ignore_ascii_case(w)) {
            break;
        }
        toks.next();
    }
}

fn expect_word<'a, I: Iterator<Item = Tok<'a>>>(toks: &mut Toks<I>, word: &str) -> Option<()> {
    match toks.next()? {
        Tok::Word(w) if w.eq_ignore_ascii_case(word) => Some(()),
        _ => None,
    }
}

fn skip_if_exists<'a, I: Iterator<Item = Tok<'a>>>(toks: &mut Toks<I>) {
    if matches!(toks.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("IF")) {
        toks.next();
        skip_words(toks, &["NOT", "EXISTS"]);
    }
}

/// Words that cannot start a table name where one is expected: their presence means the
/// statement has a shape this module does not read.
const NOT_NAMES: &[&str] = &[
    "SELECT",
    "LATERAL",
    "VALUES",
    "WITH",
    "WHERE",
    "SET",
    "DEFAULT",
    "TABLE",
    "ROWS",
    "FROM",
    "UNNEST",
    "JSON_TABLE",
    "XMLTABLE",
];

/// A possibly qualified name (`a`, `s.a`, `"S"."A"`), parts joined by `.` without their
/// quotes. `paren_ok`: whether a `(` may follow (a column list) rather than meaning a
/// function call.
fn table_name<'a, I: Iterator<Item = Tok<'a>>>(
    toks: &mut Toks<I>,
    paren_ok: bool,
) -> Option<String> {
    let mut name = String::new();
    loop {
        match toks.next()? {
            Tok::Word(w) => {
                if name.is_empty() && known(w, NOT_NAMES).is_some() {
                    return None;
                }
                name.push_str(w);
            }
            Tok::Quoted(q) => name.push_str(&unquote(q)),
            _ => return None,
        }
        if name.len() > MAX_COLLECTION_LEN {
            return None;
        }
        match toks.peek() {
            Some(Tok::Punct(".")) => {
                toks.next();
                name.push('.');
            }
            Some(Tok::Punct("(")) if !paren_ok => return None,
            _ => return Some(name),
        }
    }
}

/// A quoted identifier's name: the quotes removed and a doubled quote made single.
fn unquote(q: &str) -> String {
    let Some(quote) = q.chars().next() else {
        return String::new();
    };
    let inner = &q[quote.len_utf8()..];
    let inner = inner.strip_suffix(quote).unwrap_or(inner);
    let doubled: String = [quote, quote].iter().collect();
    inner.replace(&doubled, &quote.to_string())
}

/// One lexical unit. Literals carry nothing: nothing downstream may see their content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// Whitespace or a comment.
    Space,
    /// An unquoted identifier or keyword.
    Word(&'a str),
    /// A quoted identifier, quotes included.
    Quoted(&'a str),
    /// A string, number, bit or byte string, or dollar-quoted body.
    Literal,
    /// A positional parameter: `$1`.
    Param(&'a str),
    /// Any other single character.
    Punct(&'a str),
}

/// Splits SQL text into [`Tok`]s. Decisions are made on ASCII bytes only, so every slice
/// taken starts and ends at a character boundary.
struct Lexer<'a> {
    s: &'a str,
    pos: usize,
    dialect: Dialect,
}

fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn ident_continue(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Lexer<'a> {
    fn new(s: &'a str, dialect: Dialect) -> Lexer<'a> {
        Lexer { s, pos: 0, dialect }
    }

    fn at(&self, i: usize) -> u8 {
        self.s.as_bytes().get(i).copied().unwrap_or(0)
    }

    /// Moves past a quoted run starting at `self.pos` (the opening quote), honouring doubled
    /// quotes and, if `backslash`, backslash escapes. Unterminated: to the end, and false.
    fn skip_quoted(&mut self, backslash: bool) -> bool {
        let b = self.s.as_bytes();
        let quote = b[self.pos];
        let mut i = self.pos + 1;
        while i < b.len() {
            let c = b[i];
            if backslash && c == b'\\' {
                i += 2;
            } else if c == quote {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    self.pos = i + 1;
                    return true;
                }
            } else {
                i += 1;
            }
        }
        self.pos = b.len();
        false
    }

    /// The length of a dollar-quote tag (`$$`, `$tag$`) at `self.pos`, if one starts there.
    fn dollar_tag(&self) -> Option<usize> {
        let b = self.s.as_bytes();
        let mut i = self.pos + 1;
        if b.get(i).is_some_and(|&c| ident_start(c)) {
            while b.get(i).is_some_and(|&c| ident_continue(c) && c != b'$') {
                i += 1;
            }
        }
        (b.get(i) == Some(&b'$')).then_some(i + 1 - self.pos)
    }

    fn number(&mut self) {
        let b = self.s.as_bytes();
        let mut i = self.pos;
        let radix_digit: Option<fn(&u8) -> bool> = match (b[i], self.at(i + 1) | 0x20) {
            (b'0', b'x') => Some(u8::is_ascii_hexdigit),
            (b'0', b'b') | (b'0', b'o') => Some(u8::is_ascii_digit),
            _ => None,
        };
        if let Some(digit) = radix_digit
            && b.get(i + 2).is_some_and(digit)
        {
            i += 2;
            while b.get(i).is_some_and(|c| digit(c) || *c == b'_') {
                i += 1;
            }
            self.pos = i;
            return;
        }
        let digits = |i: &mut usize| {
            while b.get(*i).is_some_and(|c| c.is_ascii_digit() || *c == b'_') {
                *i += 1;
            }
        };
        digits(&mut i);
        if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
        if b.get(i).is_some_and(|c| c | 0x20 == b'e') {
            let mut j = i + 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                i = j;
                digits(&mut i);
            }
        }
        self.pos = i;
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Tok<'a>;

    fn next(&mut self) -> Option<Tok<'a>> {
        let b = self.s.as_bytes();
        let start = self.pos;
        let c = *b.get(start)?;
        let next = self.at(start + 1);
        let mysql = self.dialect == Dialect::MySql;
        // Control characters count as whitespace: they separate tokens and are not shown.
        if c <= b' ' || c == 0x7f {
            while self.pos < b.len() && (b[self.pos] <= b' ' || b[self.pos] == 0x7f) {
                self.pos += 1;
            }
            return Some(Tok::Space);
        }
        if (c == b'-' && next == b'-') || (mysql && c == b'#') {
            self.pos = memchr::memchr(b'\n', &b[start..]).map_or(b.len(), |n| start + n + 1);
            return Some(Tok::Space);
        }
        if c == b'/' && next == b'*' {
            // PostgreSQL comments nest; MySQL's end at the first `*/`.
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                if b[i] == b'/' && self.at(i + 1) == b'*' && (depth == 0 || !mysql) {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && self.at(i + 1) == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            self.pos = i.min(b.len());
            return Some(Tok::Space);
        }
        match c {
            b'\'' => {
                let _ = self.skip_quoted(mysql);
                return Some(Tok::Literal);
            }
            b'"' if mysql => {
                let _ = self.skip_quoted(true);
                return Some(Tok::Literal);
            }
            b'"' | b'`' => {
                // Unterminated, it may hold anything up to the end (a misplaced quote before
                // a literal): hidden like one.
                if !self.skip_quoted(false) {
                    return Some(Tok::Literal);
                }
                return Some(Tok::Quoted(&self.s[start..self.pos]));
            }
            b'$' if next.is_ascii_digit() => {
                self.pos += 1;
                while self.pos < b.len() && b[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                return Some(Tok::Param(&self.s[start..self.pos]));
            }
            b'$' if !mysql => {
                if let Some(tag_len) = self.dollar_tag() {
                    let tag = &b[start..start + tag_len];
                    let body = start + tag_len;
                    self.pos = memchr::memmem::find(&b[body..], tag)
                        .map_or(b.len(), |n| body + n + tag_len);
                    return Some(Tok::Literal);
                }
            }
            b'0'..=b'9' => {
                self.number();
                return Some(Tok::Literal);
            }
            b'.' if next.is_ascii_digit() => {
                self.number();
                return Some(Tok::Literal);
            }
            _ => {}
        }
        if ident_start(c) {
            let mut i = start + 1;
            while i < b.len() && ident_continue(b[i]) {
                i += 1;
            }
            let word = &self.s[start..i];
            let after = self.at(i);
            // A string prefix: E'…' (backslash escapes), B'…', X'…', N'…', U&'…', and MySQL's
            // charset introducers (_utf8mb4'…').
            let prefix = matches!(word, "E" | "e" | "B" | "b" | "X" | "x" | "N" | "n")
                || (mysql && word.starts_with('_'));
            if after == b'\'' && prefix {
                self.pos = i;
                let _ = self.skip_quoted(mysql || word.eq_ignore_ascii_case("e"));
                return Some(Tok::Literal);
            }
            if matches!(word, "U" | "u") && after == b'&' && self.at(i + 1) == b'\'' {
                self.pos = i + 1;
                let _ = self.skip_quoted(false);
                return Some(Tok::Literal);
            }
            self.pos = i;
            return Some(Tok::Word(word));
        }
        // Any other byte here is ASCII (non-ASCII bytes start words), so one byte is one
        // character.
        self.pos = start + 1;
        Some(Tok::Punct(&self.s[start..self.pos]))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn literals_become_placeholders() {
        let cases = [
            (
                "SELECT * FROM users WHERE email = 'a@b.c'",
                "SELECT * FROM users WHERE email = ?",
            ),
            (
                "UPDATE users SET password = 'x' WHERE id = 42",
                "UPDATE users SET password = ? WHERE id = ?",
            ),
            (
                "SELECT 'it''s', E'a\\'b', 1.5e-3, .5, 0x1F, 0b101",
                "SELECT ?, ?, ?, ?, ?, ?",
            ),
            (
                "SELECT $$secret$$, $fn$ body 'x' $fn$ FROM t",
                "SELECT ?, ? FROM t",
            ),
            (
                "SELECT B'0101', X'ff', N'nat', U&'d\\0061t'",
                "SELECT ?, ?, ?, ?",
            ),
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            ),
            (
                "SELECT \"Col 1\", t1.c2 FROM \"T\" t1",
                "SELECT \"Col 1\", t1.c2 FROM \"T\" t1",
            ),
            (
                "SELECT TRUE, NULL, x::int4 FROM t",
                "SELECT TRUE, NULL, x::int4 FROM t",
            ),
            (
                "SELECT 1 -- the secret 'x'\n, 2 /* a /* nested */ 'y' */ FROM t",
                "SELECT ? , ? FROM t",
            ),
            ("SELECT  a,\n\tb\r\n FROM   t  ", "SELECT a, b FROM t"),
            ("SELECT a$b, col_2 FROM t", "SELECT a$b, col_2 FROM t"),
        ];
        for (sql, want) in cases {
            assert_eq!(sanitize(sql), want, "{sql}");
        }
    }

    #[test]
    fn secrets_never_survive() {
        for sql in [
            "SELECT * FROM users WHERE email = 'a@b.c'",
            "UPDATE users SET password = 'x' WHERE email = 'a@b.c'",
            "INSERT INTO users (email, password) VALUES ('a@b.c', 'x')",
            // Cut short by capture: the open literal is still hidden.
            "SELECT * FROM users WHERE email = 'a@b.c",
            "SELECT * FROM users WHERE password = $q$x",
            "SELECT * FROM users WHERE password = E'\\'x",
            // A stray double quote before a literal.
            "SELECT \"a FROM users WHERE password = 'x'",
        ] {
            let out = sanitize(sql);
            assert!(!out.contains("a@b.c"), "{out}");
            assert!(!out.contains("'x"), "{out}");
            assert!(!out.contains("x'"), "{out}");
        }
    }

    #[test]
    fn mysql_dialect() {
        let out = sanitize_with(
            "SELECT `t`.a FROM `t` WHERE s = 'it\\'s secret' AND d = \"dq\" # trailing 'x'\n",
            Dialect::MySql,
        );
        assert_eq!(out, "SELECT `t`.a FROM `t` WHERE s = ? AND d = ?");
    }

    #[test]
    fn output_is_bounded() {
        let sql = format!("SELECT {} FROM t", vec!["colümn"; 1000].join(", "));
        let out = sanitize(&sql);
        assert!(out.len() <= MAX_SANITIZED_LEN + TRUNCATED.len());
        assert!(out.ends_with(TRUNCATED));
        assert!(sanitize(&"'".repeat(100_000)).len() <= 2);
    }

    #[test]
    fn operations() {
        let cases = [
            ("select 1", Some("SELECT")),
            ("  /* c */ (SELECT 1) UNION (SELECT 2)", Some("SELECT")),
            ("insert into t values (1)", Some("INSERT")),
            ("BEGIN; UPDATE t SET a = 1; COMMIT", Some("BEGIN")),
            (
                "WITH x AS (SELECT 1 FROM a) SELECT * FROM x",
                Some("SELECT"),
            ),
            (
                "WITH RECURSIVE x(n) AS (VALUES (1)) INSERT INTO t SELECT n FROM x",
                Some("INSERT"),
            ),
            (
                "WITH x AS (DELETE FROM a RETURNING *) UPDATE b SET c = 1",
                Some("UPDATE"),
            ),
            ("create table t (a int)", Some("CREATE")),
            ("frobnicate the thing", None),
            ("'SELECT'", None),
            ("", None),
        ];
        for (sql, want) in cases {
            assert_eq!(operation(sql).as_deref(), want, "{sql}");
        }
    }

    #[test]
    fn collections() {
        let cases = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                Some("pgbench_accounts"),
            ),
            (
                "select a, (select b from inner_t) from outer_t o join x on true",
                Some("outer_t"),
            ),
            (
                "SELECT extract(year FROM d) FROM public.events",
                Some("public.events"),
            ),
            ("SELECT * FROM \"My Table\"", Some("My Table")),
            ("SELECT * FROM public.\"Or\"\"der\"", Some("public.Or\"der")),
            ("SELECT * FROM ONLY t", Some("t")),
            ("SELECT 1", None),
            ("SELECT * FROM (SELECT 1) s", None),
            ("SELECT * FROM generate_series(1, 10)", None),
            ("SELECT * FROM LATERAL f(x)", None),
            (
                "INSERT INTO pgbench_history (tid, bid) VALUES ($1, $2)",
                Some("pgbench_history"),
            ),
            ("INSERT IGNORE INTO t2 VALUES (1)", Some("t2")),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + $1",
                Some("pgbench_accounts"),
            ),
            ("UPDATE ONLY s.t SET a = 1", Some("s.t")),
            ("DELETE FROM sessions WHERE id = 1", Some("sessions")),
            (
                "CREATE TEMP TABLE IF NOT EXISTS scratch (a int)",
                Some("scratch"),
            ),
            ("CREATE INDEX i ON t (a)", None),
            ("DROP TABLE IF EXISTS old", Some("old")),
            ("TRUNCATE TABLE logs", Some("logs")),
            ("COPY t (a, b) FROM STDIN", Some("t")),
            ("COPY (SELECT 1) TO STDOUT", None),
            ("WITH x AS (SELECT 1) SELECT * FROM x", None),
            ("BEGIN", None),
            ("SELECT * FROM", None),
        ];
        for (sql, want) in cases {
            assert_eq!(collection(sql).as_deref(), want, "{sql}");
        }
    }

    /// A query piece: (text, whether it is a literal).
    fn piece() -> impl Strategy<Value = String> {
        // Identifiers and keywords are uppercase, literal contents lowercase: no lowercase
        // letter may reach the output. Digits only occur in numeric literals (and `$n`).
        let content = "[a-z '\\\\%_*/;\"$#-]{0,12}";
        prop_oneof![
            "[A-Z_]{1,8}".prop_map(|s| s),
            "\"[A-Z ]{1,6}\"".prop_map(|s| s),
            Just(",".to_string()),
            Just("(".to_string()),
            Just(")".to_string()),
            Just("=".to_string()),
            Just("::".to_string()),
            "\\$[1-9]".prop_map(|s| s),
            "-- [a-z]{0,6}\n".prop_map(|s| s),
            "/\\* [a-z ']{0,6} \\*/".prop_map(|s| s),
            content.prop_map(|c| format!("'{}'", c.replace('\'', "''"))),
            content.prop_map(|c| format!("E'{}'", c.replace('\\', "\\\\").replace('\'', "\\'"))),
            (content, "[A-Z]{0,3}").prop_filter_map("tag inside", |(c, tag)| {
                let t = format!("${tag}$");
                (!c.contains(&t) && !c.ends_with('$')).then(|| format!("{t}{c}{t}"))
            }),
            "[0-9]{1,6}(\\.[0-9]{1,3})?(e-?[0-9]{1,2})?".prop_map(|s| s),
            "0x[0-9a-f]{1,4}".prop_map(|s| s),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_literal_content_survives(pieces in prop::collection::vec(piece(), 0..24)) {
            let sql = pieces.join(" ");
            let out = sanitize(&sql);
            prop_assert!(!out.chars().any(|c| c.is_ascii_lowercase()), "{sql:?} -> {out:?}");
            let without_params = out
                .split('$')
                .enumerate()
                .map(|(i, s)| if i == 0 { s } else { s.trim_start_matches(|c: char| c.is_ascii_digit()) })
                .collect::<String>();
            prop_assert!(!without_params.chars().any(|c| c.is_ascii_digit()), "{sql:?} -> {out:?}");
        }

        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let out = sanitize(&s);
            prop_assert!(out.len() <= MAX_SANITIZED_LEN + TRUNCATED.len());
            let _ = sanitize_with(&s, Dialect::MySql);
            let _ = operation(&s);
            let _ = collection(&s);
        }
    }
}
