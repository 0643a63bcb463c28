// Driver conformance script for pgjdbc, the PostgreSQL JDBC driver (run by tests/conformance.rs).
//
// Usage: java -cp /usr/share/java/postgresql.jar tests/clients/jdbc/Conformance.java URL PREFIX
//
// (Java's single-file source launcher: no build tool. Debian's package libpostgresql-jdbc-java installs the
// jar.) URL is a postgresql:// URI (user and password in it, query parameters passed on as pgjdbc connection
// properties, e.g. sslmode=disable) or a jdbc:postgresql: URL; PREFIX (e.g. "cf_1a2b3c4d_") starts the name
// of every table the script creates, so several copies can run at once against the same schema. The script
// runs a fixed list of protocol features and prints one JSON object per step on stdout: what the driver
// observed (rows with their column types, update counts, errors with SQLSTATE, warnings from notices, COPY
// bytes). PREFIX is replaced by "t_" in the output, and nothing that legitimately differs between targets
// (backend pid, now(), role or schema names) is printed, so the transcript of a run directly against
// PostgreSQL and through pgtenant must be identical.
//
// The whole list runs three times, each pass on its own connection (step names start with the pass):
//   extended  - pgjdbc's defaults: the extended protocol for everything, a PreparedStatement (and every
//               statement text, through the per-connection statement cache) becomes a named server-side
//               statement (S_1, S_2 ...) at its 5th execution (prepareThreshold=5), with binary results
//               for the types pgjdbc knows from then on;
//   named     - prepareThreshold=1: every statement, plain Statements too, is a named one from its first
//               execution; over 256 texts the cache closes the oldest (Close S_n);
//   simple    - preferQueryMode=simple: the simple query protocol, parameters inlined by the driver, several
//               statements in one Query message.
// In the first two a Statement with several statements is split by pgjdbc into one Parse/Bind/Execute per
// statement with one Sync; executeBatch pipelines its statements (one Sync per batch); with autocommit off
// pgjdbc sends BEGIN in front of the transaction's first statement, in the same pipeline; setFetchSize in a
// transaction reads a named portal (C_n) in batches (Execute with a row limit, PortalSuspended) and
// setMaxRows limits an unnamed portal outside one. COPY goes through CopyManager (the simple protocol).
//
// The JVM's default time zone is set to Asia/Kathmandu before connecting: pgjdbc sends it as TimeZone in
// the startup packet (with DateStyle=ISO and extra_float_digits), so the session's zone is the client's.
// With PGTENANT_JDBC_TRACE=DIR, pgjdbc's protocol trace (every message it sends and receives) is written to
// DIR/jdbc-PREFIX.log. A step that fails records the error and the script goes on: the exit status is 0
// unless the script itself is broken; the last line is {"step": "end"}.
//
// This file is ASCII: non-ASCII characters are written as escapes, whatever encoding javac assumes.

import java.io.ByteArrayOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.SQLWarning;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TimeZone;
import java.util.TreeMap;
import java.util.TreeSet;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyIn;
import org.postgresql.copy.CopyManager;
import org.postgresql.copy.CopyOut;
import org.postgresql.core.BaseConnection;
import org.postgresql.util.PGobject;
import org.postgresql.util.PSQLException;
import org.postgresql.util.PSQLWarning;
import org.postgresql.util.ServerErrorMessage;

public class Conformance {
  static final int LARGE = 4 * 1024 * 1024;
  static final String ZURICH = "Z\u00fcrich";
  static final String TOKYO = "\u6771\u4eac";

  static String PREFIX;
  static String ITEMS;
  static String COPYT;
  static String BIG;
  static String MANY;
  static PrintStream OUT;

  static String jdbcUrl;
  static Properties baseProps = new Properties();

  /** The connection of the current pass. */
  static Connection c;
  /** The current pass. */
  static String pass;

  static final List<Object> NOTICES = new ArrayList<>();

  // ----------------------------------------------------------------------------------------------------------
  // JSON and normalised values
  // ----------------------------------------------------------------------------------------------------------

  /** A JSON object with sorted keys: obj("k1", v1, "k2", v2 ...). */
  static Map<String, Object> obj(Object... kv) {
    Map<String, Object> m = new TreeMap<>();
    for (int i = 0; i < kv.length; i += 2) {
      m.put((String) kv[i], kv[i + 1]);
    }
    return m;
  }

  static List<Object> list(Object... xs) {
    return new ArrayList<>(Arrays.asList(xs));
  }

  static void json(StringBuilder sb, Object v) {
    if (v == null) {
      sb.append("null");
    } else if (v instanceof String) {
      String s = (String) v;
      sb.append('"');
      for (int i = 0; i < s.length(); i++) {
        char ch = s.charAt(i);
        switch (ch) {
          case '"':
            sb.append("\\\"");
            break;
          case '\\':
            sb.append("\\\\");
            break;
          case '\n':
            sb.append("\\n");
            break;
          case '\r':
            sb.append("\\r");
            break;
          case '\t':
            sb.append("\\t");
            break;
          default:
            if (ch < 0x20) {
              sb.append(String.format("\\u%04x", (int) ch));
            } else {
              sb.append(ch);
            }
        }
      }
      sb.append('"');
    } else if (v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof Short) {
      sb.append(v);
    } else if (v instanceof Map) {
      sb.append('{');
      boolean first = true;
      for (Map.Entry<?, ?> e : new TreeMap<>((Map<?, ?>) v).entrySet()) {
        if (!first) sb.append(", ");
        first = false;
        json(sb, String.valueOf(e.getKey()));
        sb.append(": ");
        json(sb, e.getValue());
      }
      sb.append('}');
    } else if (v instanceof List) {
      sb.append('[');
      boolean first = true;
      for (Object x : (List<?>) v) {
        if (!first) sb.append(", ");
        first = false;
        json(sb, x);
      }
      sb.append(']');
    } else {
      json(sb, v.getClass().getSimpleName() + ": " + v);
    }
  }

  static String toJson(Object v) {
    StringBuilder sb = new StringBuilder();
    json(sb, v);
    return sb.toString();
  }

  static void emit(Map<String, Object> record) {
    OUT.println(toJson(record).replace(PREFIX, "t_"));
    OUT.flush();
  }

  static String hex(byte[] b) {
    char[] digits = "0123456789abcdef".toCharArray();
    StringBuilder sb = new StringBuilder(b.length * 2);
    for (byte x : b) sb.append(digits[(x >> 4) & 0xf]).append(digits[x & 0xf]);
    return sb.toString();
  }

  static String digest(byte[] b) {
    try {
      return hex(MessageDigest.getInstance("SHA-256").digest(b));
    } catch (Exception e) {
      throw new RuntimeException(e);
    }
  }

  static String digest(String s) {
    return digest(s.getBytes(StandardCharsets.UTF_8));
  }

  /** A JSON-able, type-revealing form of a value the driver returned. */
  static Object norm(Object v) throws SQLException {
    if (v == null || v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof Short) {
      return v;
    }
    if (v instanceof Double || v instanceof Float) return obj("float", v.toString());
    if (v instanceof BigDecimal) return obj("numeric", v.toString());
    if (v instanceof String) {
      String s = (String) v;
      if (s.length() > 300) return obj("text_len", s.codePointCount(0, s.length()), "sha256", digest(s));
      return s;
    }
    if (v instanceof byte[]) {
      byte[] b = (byte[]) v;
      if (b.length > 300) return obj("bytes_len", b.length, "sha256", digest(b));
      return obj("bytes", hex(b));
    }
    if (v instanceof java.sql.Timestamp) return obj("timestamp", ((java.sql.Timestamp) v).toInstant().toString());
    if (v instanceof java.sql.Date) return obj("date", v.toString());
    if (v instanceof java.sql.Time) return obj("time", v.toString());
    if (v instanceof java.sql.Array) {
      java.sql.Array a = (java.sql.Array) v;
      return obj("array", norm(a.getArray()), "base_type", a.getBaseTypeName());
    }
    if (v instanceof Object[]) {
      List<Object> out = new ArrayList<>();
      for (Object x : (Object[]) v) out.add(norm(x));
      return out;
    }
    if (v instanceof PGobject) {
      PGobject o = (PGobject) v;
      return obj(v.getClass().getSimpleName(), o.getValue(), "type", o.getType());
    }
    return obj(v.getClass().getSimpleName(), v.toString());
  }

  // ----------------------------------------------------------------------------------------------------------
  // What the driver shows: results, errors, warnings
  // ----------------------------------------------------------------------------------------------------------

  static List<Object> columns(ResultSetMetaData md) throws SQLException {
    List<Object> cols = new ArrayList<>();
    for (int i = 1; i <= md.getColumnCount(); i++) {
      cols.add(list(md.getColumnLabel(i), md.getColumnTypeName(i)));
    }
    return cols;
  }

  /** Every row of rs (getObject of every column, normalised); with text, getString of every column too. */
  static Map<String, Object> rows(ResultSet rs, boolean text) throws SQLException {
    ResultSetMetaData md = rs.getMetaData();
    int n = md.getColumnCount();
    List<Object> rows = new ArrayList<>();
    List<Object> texts = new ArrayList<>();
    while (rs.next()) {
      List<Object> row = new ArrayList<>();
      List<Object> t = new ArrayList<>();
      for (int i = 1; i <= n; i++) {
        row.add(norm(rs.getObject(i)));
        if (text) {
          String str = rs.getString(i);
          // pgjdbc 42.5's getString of a bytea received in binary (a named statement's results) is the
          // byte[]'s toString: an identity hash, different on every run.
          if (str != null && str.matches("\\[B@[0-9a-f]+")) str = "[B@(identity hash)";
          t.add(norm(str));
        }
      }
      rows.add(row);
      texts.add(t);
    }
    Map<String, Object> out = obj("columns", columns(md), "rows", rows);
    if (text) out.put("text", texts);
    rs.close();
    return out;
  }

  /** Every result of an executed statement: result sets and update counts, in order. */
  static List<Object> results(Statement s, boolean isResultSet, boolean text) throws SQLException {
    List<Object> out = new ArrayList<>();
    while (true) {
      if (isResultSet) {
        out.add(rows(s.getResultSet(), text));
      } else {
        int n = s.getUpdateCount();
        if (n == -1) break;
        out.add(obj("update_count", n));
      }
      isResultSet = s.getMoreResults();
    }
    return out;
  }

  static Map<String, Object> serverMessage(ServerErrorMessage m) {
    return obj(
        "severity", m.getSeverity(),
        "sqlstate", m.getSQLState(),
        "message", m.getMessage(),
        "detail", m.getDetail(),
        "hint", m.getHint(),
        "where", m.getWhere(),
        "position", m.getPosition(),
        "table", m.getTable(),
        "column", m.getColumn(),
        "constraint", m.getConstraint(),
        "datatype", m.getDatatype());
  }

  static Map<String, Object> error(SQLException e) {
    Map<String, Object> out = obj("class", e.getClass().getSimpleName(), "sqlstate", e.getSQLState());
    ServerErrorMessage m = e instanceof PSQLException ? ((PSQLException) e).getServerErrorMessage() : null;
    if (m != null) {
      out.put("server", serverMessage(m));
    } else {
      out.put("message", e.getMessage());
    }
    if (e instanceof BatchUpdateException) {
      List<Object> counts = new ArrayList<>();
      for (int n : ((BatchUpdateException) e).getUpdateCounts()) counts.add(n);
      out.put("update_counts", counts);
    }
    SQLException next = e.getNextException();
    if (next != null && next != e) out.put("next", error(next));
    return out;
  }

  static void drain(SQLWarning w) {
    for (; w != null; w = w.getNextWarning()) {
      ServerErrorMessage m = w instanceof PSQLWarning ? ((PSQLWarning) w).getServerErrorMessage() : null;
      if (m != null) {
        NOTICES.add(obj(
            "severity", m.getSeverity(),
            "sqlstate", m.getSQLState(),
            "message", m.getMessage(),
            "detail", m.getDetail(),
            "hint", m.getHint()));
      } else {
        NOTICES.add(obj("sqlstate", w.getSQLState(), "warning", w.getMessage()));
      }
    }
  }

  static void drain(Statement s) throws SQLException {
    drain(s.getWarnings());
    s.clearWarnings();
  }

  static void drainConnection(Connection conn) throws SQLException {
    drain(conn.getWarnings());
    conn.clearWarnings();
  }

  // ----------------------------------------------------------------------------------------------------------
  // Running statements
  // ----------------------------------------------------------------------------------------------------------

  /** A typed SQL NULL parameter. */
  static final class Null {
    final int type;

    Null(int type) {
      this.type = type;
    }
  }

  static void bind(PreparedStatement ps, Object... params) throws SQLException {
    for (int i = 0; i < params.length; i++) {
      Object v = params[i];
      int k = i + 1;
      if (v instanceof Null) ps.setNull(k, ((Null) v).type);
      else if (v instanceof Integer) ps.setInt(k, (Integer) v);
      else if (v instanceof Long) ps.setLong(k, (Long) v);
      else if (v instanceof String) ps.setString(k, (String) v);
      else if (v instanceof byte[] && "simple".equals(pass)) {
        // pgjdbc 42.5 cannot inline a bytea parameter in simple mode (it leaves the '?' in the text): hex text.
        ps.setString(k, "\\x" + hex((byte[]) v));
      } else if (v instanceof byte[]) ps.setBytes(k, (byte[]) v);
      else if (v instanceof BigDecimal) ps.setBigDecimal(k, (BigDecimal) v);
      else if (v instanceof Boolean) ps.setBoolean(k, (Boolean) v);
      else if (v instanceof Double) ps.setDouble(k, (Double) v);
      else if (v instanceof java.sql.Timestamp) ps.setTimestamp(k, (java.sql.Timestamp) v);
      else if (v instanceof java.sql.Array) ps.setArray(k, (java.sql.Array) v);
      else ps.setObject(k, v);
    }
  }

  /** A plain Statement; every result. */
  static List<Object> exec(String sql) throws SQLException {
    return exec(sql, false);
  }

  static List<Object> exec(String sql, boolean text) throws SQLException {
    try (Statement s = c.createStatement()) {
      try {
        return results(s, s.execute(sql), text);
      } finally {
        drain(s);
      }
    }
  }

  /** A PreparedStatement executed once with params; every result. */
  static List<Object> prep(String sql, Object... params) throws SQLException {
    try (PreparedStatement ps = c.prepareStatement(sql)) {
      return run(ps, false, params);
    }
  }

  static List<Object> run(PreparedStatement ps, boolean text, Object... params) throws SQLException {
    bind(ps, params);
    try {
      return results(ps, ps.execute(), text);
    } finally {
      drain(ps);
    }
  }

  static List<Object> count(String sql, Object... params) throws SQLException {
    try (PreparedStatement ps = c.prepareStatement(sql)) {
      bind(ps, params);
      try (ResultSet rs = ps.executeQuery()) {
        List<Object> out = new ArrayList<>();
        while (rs.next()) out.add(norm(rs.getObject(1)));
        return out;
      }
    }
  }

  static Object alive() throws SQLException {
    return count("SELECT 1 AS alive");
  }

  static String status() throws SQLException {
    return c.unwrap(BaseConnection.class).getTransactionState().name();
  }

  interface Body {
    Object run() throws Exception;
  }

  /** fn's result, or the SQL error it raised, as a value (for several statements in one step). */
  static Map<String, Object> attempt(Body fn) throws Exception {
    try {
      return obj("ok", fn.run());
    } catch (SQLException e) {
      return obj("error", error(e));
    }
  }

  static PGobject pgobject(String type, String value) throws SQLException {
    PGobject o = new PGobject();
    o.setType(type);
    o.setValue(value);
    return o;
  }

  static Map<String, Object> batchCounts(int[] counts) {
    List<Object> all = new ArrayList<>();
    long sum = 0;
    for (int n : counts) {
      all.add(n);
      sum += n;
    }
    return obj("len", counts.length, "sum", sum, "distinct", new ArrayList<>(new TreeSet<>(all.stream().map(x -> (Integer) x).toList())));
  }

  // ----------------------------------------------------------------------------------------------------------
  // Steps
  // ----------------------------------------------------------------------------------------------------------

  static void step(String name, Body body) {
    Map<String, Object> record = obj("step", pass + "/" + name);
    try {
      record.put("out", body.run());
    } catch (SQLException e) {
      record.put("error", error(e));
    } catch (Exception e) {
      record.put("exception", e.getClass().getSimpleName() + ": " + e.getMessage());
      e.printStackTrace(System.err);
    }
    try {
      drainConnection(c);
    } catch (SQLException e) {
      record.put("warnings_error", error(e));
    }
    if (!NOTICES.isEmpty()) {
      record.put("notices", new ArrayList<>(NOTICES));
      NOTICES.clear();
    }
    // A step that failed half-way through a transaction: end it, so that the next steps start alike.
    try {
      if (!c.isClosed() && !c.getAutoCommit()) {
        c.rollback();
        c.setAutoCommit(true);
        record.put("cleanup", "rolled back and autocommit restored");
      }
    } catch (SQLException e) {
      record.put("cleanup_error", error(e));
    }
    emit(record);
    reportBackend();
  }

  /**
   * The server backend this step ended on, on stderr (never in the transcript): the test checks that
   * transaction pooling served the copies of the script from a shared, bounded set of server connections.
   */
  static void reportBackend() {
    try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT pg_backend_pid()")) {
      rs.next();
      System.err.println("backend_pid " + rs.getInt(1));
    } catch (SQLException e) {
      // e.g. a broken connection: nothing to report
    }
    try {
      c.clearWarnings();
    } catch (SQLException e) {
      // closed
    }
    NOTICES.clear();
  }

  static Connection connect(Properties extra) throws SQLException {
    Properties p = new Properties();
    p.putAll(baseProps);
    p.putAll(extra);
    return DriverManager.getConnection(jdbcUrl, p);
  }

  static Properties props(String... kv) {
    Properties p = new Properties();
    for (int i = 0; i < kv.length; i += 2) p.setProperty(kv[i], kv[i + 1]);
    return p;
  }

  static final String[][] ERRORS = {
    {"err_unique_violation", "prep", "INSERT INTO %ITEMS% (id, name) VALUES (?, ?)", "1", "dup"},
    {"err_division_by_zero", "prep", "SELECT 1 / ?::int AS x", "0"},
    {"err_division_by_zero_simple", "exec", "SELECT 1 / 0"},
    {"err_syntax", "prep", "SELEC ?::int", "1"},
    {"err_syntax_simple", "exec", "SELEC 1"},
    {"err_undefined_table", "prep", "SELECT * FROM no_such_table_anywhere WHERE x = ?", "1"},
    {"err_undefined_table_simple", "exec", "SELECT * FROM no_such_table_anywhere"},
    {"err_not_null", "prep", "INSERT INTO %ITEMS% (id, name) VALUES (?, NULL)", "7"},
    {"err_bad_input", "prep", "SELECT ?::int AS x", "twelve"},
    {
      "err_raise_exception",
      "exec",
      "DO $$ BEGIN RAISE EXCEPTION 'custom % failure', '" + ZURICH + "' "
          + "USING ERRCODE = 'P0042', DETAIL = 'the detail', HINT = 'the hint'; END $$"
    },
  };

  static final String PARAM_SQL =
      "SELECT ?::int AS i, ?::text AS t, ?::bytea AS b, ?::numeric AS n, ?::timestamptz AS ts, "
          + "?::json AS j, ?::int[] AS ia, ?::text[] AS ta, ?::text AS nul, ?::text AS empty, "
          + "?::int8 + 1 AS i8, ?::float8 AS f, ?::bool AS bo, ?::date AS d, ?::timestamptz AS ts2, "
          + "?::int AS null_int, ?::jsonb AS jb";

  static Object[] params() throws SQLException {
    byte[] b = new byte[32];
    for (int i = 0; i < 32; i += 4) {
      b[i] = 0;
      b[i + 1] = 1;
      b[i + 2] = (byte) 0xfe;
      b[i + 3] = (byte) 0xff;
    }
    return new Object[] {
      42,
      ZURICH + " " + TOKYO + " 'single' \"double\" \\ \uD83D\uDE42",
      b,
      new BigDecimal("-12345678901234567890.0123456789"),
      OffsetDateTime.of(2024, 2, 29, 23, 59, 59, 123456000, ZoneOffset.UTC),
      pgobject("json", "{\"k\": [1, \"two\", null, {\"n\": 3.5}]}"),
      c.createArrayOf("int4", new Integer[] {1, null, -3}),
      c.createArrayOf("text", new String[] {"a", "b,c", "{}", "\"q\"", null}),
      new Null(Types.VARCHAR),
      "",
      1L << 40,
      0.25,
      false,
      LocalDate.of(2024, 2, 29),
      java.sql.Timestamp.from(java.time.Instant.parse("2024-07-01T12:34:56.789Z")),
      new Null(Types.INTEGER),
      pgobject("jsonb", "{\"z\": 1, \"a\": [true, 2.50]}"),
    };
  }

  static String largeText() {
    StringBuilder sb = new StringBuilder(LARGE + 8);
    for (int i = 0; i < LARGE; i++) sb.append((char) (0x20 + (int) (((long) i * 7919) % 0x5F)));
    return sb.append(ZURICH).toString();
  }

  static byte[] largeBytes() {
    byte[] b = new byte[LARGE];
    for (int i = 0; i < LARGE; i++) b[i] = (byte) ((i * 31 + 7) % 256);
    return b;
  }

  static byte[] utf8(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  static CopyManager copyApi() throws SQLException {
    return c.unwrap(PGConnection.class).getCopyAPI();
  }

  /** CopyManager.copyIn with the chunks written one by one (CopyData boundaries as given). */
  static Map<String, Object> copyIn(String sql, byte[]... chunks) throws SQLException {
    CopyIn in = copyApi().copyIn(sql);
    try {
      for (byte[] chunk : chunks) in.writeToCopy(chunk, 0, chunk.length);
      return obj("rows", in.endCopy());
    } finally {
      if (in.isActive()) in.cancelCopy();
    }
  }

  static Map<String, Object> copyOut(String sql) throws SQLException {
    CopyOut out = copyApi().copyOut(sql);
    ByteArrayOutputStream data = new ByteArrayOutputStream();
    try {
      byte[] chunk;
      while ((chunk = out.readFromCopy()) != null) data.write(chunk, 0, chunk.length);
    } finally {
      if (out.isActive()) out.cancelCopy();
    }
    return obj("rows", out.getHandledRowCount(), "data", norm(data.toByteArray()));
  }

  static Object copyTable() throws SQLException {
    return prep("SELECT id, name, amount, data FROM " + COPYT + " ORDER BY id, name");
  }

  /** Binary COPY of rows (int4, text, bytea): header, tuples, trailer. */
  static byte[] binaryCopy(Object[][] rows) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    out.writeBytes(new byte[] {'P', 'G', 'C', 'O', 'P', 'Y', '\n', (byte) 0xff, '\r', '\n', 0});
    out.writeBytes(new byte[8]);
    for (Object[] row : rows) {
      out.writeBytes(new byte[] {0, 3});
      byte[][] fields = {
        java.nio.ByteBuffer.allocate(4).putInt((Integer) row[0]).array(),
        row[1] == null ? null : utf8((String) row[1]),
        (byte[]) row[2],
      };
      for (byte[] f : fields) {
        int len = f == null ? -1 : f.length;
        out.writeBytes(java.nio.ByteBuffer.allocate(4).putInt(len).array());
        if (f != null) out.writeBytes(f);
      }
    }
    out.writeBytes(new byte[] {(byte) 0xff, (byte) 0xff});
    return out.toByteArray();
  }

  static void steps() throws Exception {
    step("setup", () -> exec(
        "DROP TABLE IF EXISTS " + ITEMS + ", " + COPYT + ", " + BIG + ", " + MANY + ";\n"
            + "CREATE TABLE " + ITEMS + " (\n"
            + "    id int PRIMARY KEY, name text NOT NULL, amount numeric(12, 2), at timestamptz, doc jsonb,\n"
            + "    data bytea, tags text[]);\n"
            + "CREATE TABLE " + COPYT + " (id int, name text, amount numeric(12, 2), data bytea);\n"
            + "CREATE TABLE " + BIG + " (id int PRIMARY KEY, body text, data bytea);\n"
            + "CREATE TABLE " + MANY + " (n int PRIMARY KEY, label text);\n"
            + "CREATE TYPE " + PREFIX + "mood AS ENUM ('sad', 'ok', 'happy');\n"
            + "CREATE TYPE " + PREFIX + "pair AS (a int, b text);\n"
            + "CREATE FUNCTION " + PREFIX + "noisy(n int) RETURNS int LANGUAGE plpgsql AS $$\n"
            + "BEGIN\n"
            + "    RAISE NOTICE 'noisy %', n USING DETAIL = 'detail of ' || n, HINT = 'a hint';\n"
            + "    RETURN n * 2;\n"
            + "END $$;\n"));

    step("session_settings", () -> {
      // What pgjdbc set at login (startup packet and its SETs), as the server sees it.
      return exec(
          "SELECT current_setting('TimeZone') AS tz, current_setting('DateStyle') AS ds, "
              + "current_setting('client_encoding') AS enc, current_setting('application_name') AS app, "
              + "current_setting('extra_float_digits')::int > 0 AS shortest_floats, "
              + "'2024-07-01 12:34:56.789+00'::timestamptz::text AS ts");
    });

    step("simple_select", () -> exec(
        "SELECT 1 AS int, 'text'::text AS text, NULL::int AS null, 2.50::numeric(4,2) AS numeric, "
            + "true AS bool, '\\x00ff'::bytea AS bytea, ARRAY[1,2,NULL] AS arr, '{\"a\": [1, null]}'::jsonb AS jsonb, "
            + "'2024-02-29 23:59:59.123456+00'::timestamptz AS tstz, '1 day 02:03:04'::interval AS ival, "
            + "1.5::float8 AS float8, 0.1::float8 + 0.2::float8 AS sum8, 9007199254740993::int8 AS int8, "
            + "'2024-02-29'::date AS date, '12:34:56'::time AS time, 'a'::char AS ch, "
            + "'6f1c6f2e-8e4b-4c7e-9a52-4a1d2b3c4d5e'::uuid AS uuid, ARRAY['x', NULL]::text[] AS tarr",
        true));

    step("params", () -> {
      // One PreparedStatement executed 7 times: unnamed for the first 4 (prepareThreshold=5), then named.
      List<Object> out = new ArrayList<>();
      try (PreparedStatement ps = c.prepareStatement(PARAM_SQL)) {
        for (int i = 0; i < 7; i++) out.add(run(ps, true, params()));
      }
      return out;
    });

    step("insert_tags", () -> {
      List<Object> out = new ArrayList<>();
      try (PreparedStatement ps = c.prepareStatement(
          "INSERT INTO " + ITEMS + " (id, name, amount, at, doc, data, tags) VALUES (?, ?, ?, ?, ?, ?, ?)")) {
        for (int i = 1; i <= 5; i++) {
          byte[] data = new byte[i];
          Arrays.fill(data, (byte) i);
          bind(ps, i, "item " + i, new BigDecimal(i).multiply(new BigDecimal("1.25")),
              OffsetDateTime.of(2024, 1, i, 12, 0, 0, 0, ZoneOffset.UTC), pgobject("jsonb", "{\"i\": " + i + "}"),
              data, c.createArrayOf("text", new String[] {"t" + i, null}));
          out.add(obj("update_count", ps.executeUpdate()));
        }
      }
      out.add(prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?) RETURNING id, name", 6, "six"));
      try (PreparedStatement ps = c.prepareStatement(
          "INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", Statement.RETURN_GENERATED_KEYS)) {
        bind(ps, 7, "seven");
        out.add(obj("update_count", ps.executeUpdate(), "generated_keys", rows(ps.getGeneratedKeys(), false)));
      }
      out.add(prep("DELETE FROM " + ITEMS + " WHERE id = ?", 7));
      return out;
    });

    step("batch", () -> {
      List<Object> out = new ArrayList<>();
      try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + ITEMS + " (id, name, amount) VALUES (?, ?, ?)")) {
        for (int i = 0; i < 200; i++) {
          bind(ps, 100 + i, "bulk " + i, new BigDecimal(i));
          ps.addBatch();
        }
        out.add(batchCounts(ps.executeBatch()));
      }
      try (Statement s = c.createStatement()) {
        s.addBatch("UPDATE " + ITEMS + " SET name = name WHERE id BETWEEN 100 AND 109");
        s.addBatch("DELETE FROM " + ITEMS + " WHERE id = -1");
        s.addBatch("INSERT INTO " + ITEMS + " (id, name) VALUES (350, 'statement batch')");
        out.add(batchCounts(s.executeBatch()));
      }
      out.add(count("SELECT count(*) FROM " + ITEMS));
      return out;
    });

    step("batch_with_error", () -> {
      List<Object> out = new ArrayList<>();
      try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)")) {
        for (int i = 0; i < 20; i++) {
          bind(ps, 400 + i, "batch " + i);
          ps.addBatch();
        }
        bind(ps, 1, "dup");
        ps.addBatch();
        for (int i = 0; i < 5; i++) {
          bind(ps, 420 + i, "after dup");
          ps.addBatch();
        }
        out.add(attempt(() -> batchCounts(ps.executeBatch())));
      }
      out.add(count("SELECT count(*) FROM " + ITEMS + " WHERE id >= ? AND id < ?", 400, 500));
      out.add(prep("DELETE FROM " + ITEMS + " WHERE id >= ? AND id < ?", 400, 500));
      out.add(alive());
      return out;
    });

    step("batch_with_error_in_transaction", () -> {
      List<Object> out = new ArrayList<>();
      c.setAutoCommit(false);
      out.add(prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 450, "before batch"));
      try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)")) {
        for (int i : new int[] {451, 452, 450, 453}) {
          bind(ps, i, "in batch");
          ps.addBatch();
        }
        out.add(attempt(() -> batchCounts(ps.executeBatch())));
      }
      out.add(status());
      out.add(attempt(() -> alive()));
      c.rollback();
      out.add(status());
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + ITEMS + " WHERE id >= ? AND id < ?", 450, 460));
      return out;
    });

    step("update_delete_select_counts", () -> list(
        prep("UPDATE " + ITEMS + " SET amount = amount + 1 WHERE id >= ?", 100),
        prep("DELETE FROM " + ITEMS + " WHERE id >= ? AND id < ?", 250, 300),
        prep("SELECT id, name, amount FROM " + ITEMS + " WHERE id < ? ORDER BY id", 10),
        exec("UPDATE " + ITEMS + " SET name = name WHERE false"),
        exec("UPDATE " + ITEMS + " SET name = name WHERE id = 1; DELETE FROM " + ITEMS + " WHERE id = -1")));

    step("prepared_reused", () -> {
      long total = 0;
      List<Object> seen = new ArrayList<>();
      try (PreparedStatement fetch = c.prepareStatement("SELECT id, amount FROM " + ITEMS + " WHERE id = ?")) {
        for (int i = 0; i < 300; i++) {
          fetch.setInt(1, 100 + i % 150);
          try (ResultSet rs = fetch.executeQuery()) {
            rs.next();
            total += rs.getInt(1);
            if (i % 50 == 0) seen.add(list(norm(rs.getObject(1)), norm(rs.getObject(2))));
          }
          // A new PreparedStatement of the same text every time: pgjdbc's statement cache finds the server one.
          try (PreparedStatement ps = c.prepareStatement("SELECT ?::int * 2 AS doubled, ?::text AS label")) {
            bind(ps, i, "l" + i);
            try (ResultSet rs = ps.executeQuery()) {
              rs.next();
              total += rs.getInt(1);
            }
          }
        }
      }
      return obj("total", total, "sample", seen);
    });

    step("named_statement_errors", () -> {
      List<Object> out = new ArrayList<>();
      try (PreparedStatement ps = c.prepareStatement("SELECT 1 / ?::int AS q")) {
        for (int i = 0; i < 7; i++) out.add(attempt(() -> run(ps, false, 0)));
        out.add(attempt(() -> run(ps, false, 1)));
      }
      try (PreparedStatement ps = c.prepareStatement("SELEC ?::int")) {
        for (int i = 0; i < 6; i++) out.add(attempt(() -> run(ps, false, 1)));
      }
      out.add(alive());
      return out;
    });

    step("many_distinct_statements", () -> {
      // More texts than pgjdbc's statement cache holds (256: the oldest closed) and than pgtenant keeps per
      // server connection in transaction pooling (500): every one still answers right.
      long total = 0;
      for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 600; i++) {
          try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + " + i + " AS v")) {
            ps.setInt(1, round);
            try (ResultSet rs = ps.executeQuery()) {
              rs.next();
              total += rs.getInt(1);
            }
          }
        }
      }
      return obj("total", total);
    });

    step("enum_and_composite_types", () -> list(
        prep("SELECT ?::" + PREFIX + "mood AS m, ROW(1, 'x')::" + PREFIX + "pair AS p, ARRAY['ok', 'sad']::"
            + PREFIX + "mood[] AS ms", "happy"),
        prep("SELECT (ROW(?, ?)::" + PREFIX + "pair).b AS b", 7, "seven"),
        attempt(() -> prep("SELECT ?::" + PREFIX + "mood", "furious"))));

    step("tracked_settings", () -> {
      // pgjdbc insists on DateStyle ISO (it closes the connection on another), so only the order changes.
      String ts = "SELECT '2024-07-01 12:34:56.789+00'::timestamptz::text AS ts, "
          + "'1 day 2 hours'::interval::text AS i, '03/04/2024'::date::text AS d";
      List<Object> out = new ArrayList<>();
      out.add(exec("SET TimeZone = 'America/New_York'; SET DateStyle = 'ISO, DMY'; SET IntervalStyle = 'iso_8601'"));
      c.setClientInfo("ApplicationName", "conformance-app");
      out.add(obj("client_info", c.getClientInfo("ApplicationName")));
      for (int i = 0; i < 3; i++) {
        out.add(prep(ts + ", current_setting('application_name') AS app WHERE ?", true));
        out.add(exec(ts));
      }
      c.setAutoCommit(false);
      out.add(exec("SET LOCAL TimeZone = 'Asia/Tokyo'"));
      out.add(exec(ts));
      c.commit();
      out.add(exec(ts));
      out.add(exec("SET LOCAL statement_timeout = '4s'"));
      out.add(exec("SHOW statement_timeout"));
      c.commit();
      c.setAutoCommit(true);
      // RESET of a setting pgjdbc sent at startup (TimeZone, DateStyle, application_name) goes back to the role's
      // default through pgtenant, not to the startup value: a documented limitation (README, "Pooling modes";
      // tests/transaction.rs). Set them back explicitly instead.
      out.add(exec("SET TimeZone = 'Asia/Kathmandu'; SET DateStyle = 'ISO, MDY'; RESET IntervalStyle; "
          + "SET application_name = 'PostgreSQL JDBC Driver'"));
      out.add(exec(ts + ", current_setting('TimeZone') AS tz, current_setting('application_name') AS app"));
      c.setClientInfo("ApplicationName", "PostgreSQL JDBC Driver");
      return out;
    });

    step("txn_commit", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(
          prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1000, "committed"),
          prep("SELECT name FROM " + ITEMS + " WHERE id = ?", 1000),
          status());
      c.commit();
      out.add(status());
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + ITEMS + " WHERE id = ?", 1000));
      return out;
    });

    step("txn_rollback", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1001, "rolled back"));
      c.rollback();
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + ITEMS + " WHERE id = ?", 1001));
      return out;
    });

    step("savepoints", () -> {
      List<Object> out = new ArrayList<>();
      c.setAutoCommit(false);
      out.add(prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1002, "kept"));
      Savepoint s1 = c.setSavepoint("s1");
      out.add(attempt(() -> prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1002, "dup")));
      out.add(status());
      c.rollback(s1);
      out.add(status());
      out.add(prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1003, "after savepoint"));
      c.releaseSavepoint(s1);
      Savepoint unnamed = c.setSavepoint();
      out.add(prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1004, "rolled back to savepoint"));
      c.rollback(unnamed);
      c.commit();
      c.setAutoCommit(true);
      out.add(prep("SELECT id, name FROM " + ITEMS + " WHERE id BETWEEN ? AND ? ORDER BY id", 1002, 1004));
      return out;
    });

    step("autosave_always", () -> {
      // autosave=always: a SAVEPOINT before every statement of a transaction, rolled back to after an error.
      Properties p = props("autosave", "always");
      if ("simple".equals(pass)) p.setProperty("preferQueryMode", "simple");
      try (Connection a = connect(p)) {
        a.setAutoCommit(false);
        List<Object> out = new ArrayList<>();
        try (PreparedStatement ps = a.prepareStatement("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)")) {
          for (int id : new int[] {1005, 1005, 1006}) {
            ps.setInt(1, id);
            ps.setString(2, "autosave");
            try {
              out.add(obj("update_count", ps.executeUpdate()));
            } catch (SQLException e) {
              out.add(obj("error", error(e)));
            }
          }
        }
        a.commit();
        a.setAutoCommit(true);
        try (Statement s = a.createStatement();
            ResultSet rs = s.executeQuery("SELECT id FROM " + ITEMS + " WHERE id IN (1005, 1006) ORDER BY id")) {
          out.add(rows(rs, false));
        }
        return out;
      }
    });

    step("read_only_transaction", () -> {
      List<Object> out = new ArrayList<>();
      c.setReadOnly(true);
      c.setAutoCommit(false);
      out.add(exec("SHOW transaction_read_only"));
      out.add(attempt(() -> prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1007, "read only")));
      c.rollback();
      c.setAutoCommit(true);
      c.setReadOnly(false);
      out.add(exec("SHOW transaction_read_only"));
      return out;
    });

    for (String[] e : ERRORS) {
      String sql = e[2].replace("%ITEMS%", ITEMS);
      Object[] args = new Object[e.length - 3];
      for (int i = 3; i < e.length; i++) args[i - 3] = e[i].matches("-?[0-9]+") ? (Object) Integer.valueOf(e[i]) : e[i];
      step(e[0], () -> e[1].equals("prep") ? prep(sql, args) : exec(sql));
      step(e[0] + "_then", () -> alive());
    }

    step("error_in_transaction", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(
          prep("INSERT INTO " + ITEMS + " (id, name) VALUES (?, ?)", 1020, "lost"),
          attempt(() -> prep("SELECT 1 / ?::int", 0)),
          attempt(() -> prep("SELECT ?::int AS after_error", 1)),
          attempt(() -> exec("SELECT 1")),
          status());
      c.rollback();
      out.add(status());
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + ITEMS + " WHERE id = ?", 1020));
      return out;
    });

    step("commit_of_failed_transaction", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(attempt(() -> exec("SELECT * FROM no_such_table_anywhere")), status());
      out.add(attempt(() -> {
        c.commit();
        return "committed";
      }));
      out.add(status());
      c.setAutoCommit(true);
      out.add(alive());
      return out;
    });

    step("notices", () -> list(
        exec("DO $$ BEGIN RAISE NOTICE 'notice % of %', 1, '" + ZURICH + " " + TOKYO + "'; RAISE WARNING 'careful: %', 42; "
            + "RAISE NOTICE 'coded' USING ERRCODE = '01P42', DETAIL = 'd', HINT = 'h'; END $$"),
        prep("SELECT " + PREFIX + "noisy(?) AS v", 21),
        exec("SELECT " + PREFIX + "noisy(1) AS a, " + PREFIX + "noisy(2) AS b")));

    step("notices_in_transaction", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(
          prep("SELECT " + PREFIX + "noisy(?) AS v", 5),
          exec("DO $$ BEGIN RAISE WARNING 'inside'; END $$"));
      c.commit();
      c.setAutoCommit(true);
      return out;
    });

    step("empty_query", () -> list(attempt(() -> exec("")), attempt(() -> exec(";")), obj("valid", c.isValid(10)), alive()));

    step("multi_statement_query", () -> exec(
        "SELECT 1 AS a; SELECT 'two' AS b, NULL AS c; UPDATE " + ITEMS + " SET name = name WHERE id <= 3; "
            + "INSERT INTO " + ITEMS + " (id, name) VALUES (2000, 'multi'), (2001, 'multi'); "
            + "SELECT count(*) FROM " + ITEMS + " WHERE name = 'multi'"));

    step("multi_statement_with_error", () -> list(
        attempt(() -> exec(
            "INSERT INTO " + ITEMS + " (id, name) VALUES (2002, 'lost'); SELECT 1 / 0; "
                + "INSERT INTO " + ITEMS + " (id, name) VALUES (2003, 'never')")),
        count("SELECT count(*) FROM " + ITEMS + " WHERE id IN (2002, 2003)")));

    step("multi_statement_with_transaction", () -> list(
        exec("BEGIN; INSERT INTO " + ITEMS + " (id, name) VALUES (2010, 'in block'); COMMIT; "
            + "BEGIN; INSERT INTO " + ITEMS + " (id, name) VALUES (2011, 'rolled'); ROLLBACK; "
            + "SELECT id FROM " + ITEMS + " WHERE id IN (2010, 2011)"),
        status()));

    step("copy_in_text", () -> list(
        copyIn("COPY " + COPYT + " (id, name, amount, data) FROM STDIN",
            utf8("1\tone\t1.50\t\\\\x0001\n2\ttab\\there\t\\N\t\\N\n"),
            utf8("3\t" + ZURICH + " \\\\ " + TOKYO + "\t-3\t\\\\xff\n")),
        copyTable()));

    step("copy_in_csv", () -> list(
        copyIn("COPY " + COPYT + " (id, name, amount) FROM STDIN (FORMAT csv, HEADER true)",
            utf8("id,name,amount\n10,\"comma, quote \"\" and\nnewline\",10.10\n11,,\n"), utf8("12,\"\",12\n")),
        copyTable()));

    step("copy_in_binary", () -> {
      byte[] data = binaryCopy(new Object[][] {{20, "binary \u2713", new byte[] {0, 1, 2}}, {21, null, null}});
      // Split mid-tuple: CopyData boundaries need not follow rows.
      return list(
          copyIn("COPY " + COPYT + " (id, name, data) FROM STDIN (FORMAT binary)",
              Arrays.copyOfRange(data, 0, 25), Arrays.copyOfRange(data, 25, data.length)),
          copyTable());
    });

    step("copy_in_reader", () -> list(
        obj("rows", copyApi().copyIn("COPY " + COPYT + " (id, name) FROM STDIN (FORMAT csv)",
            new StringReader("13,from a reader\n14," + TOKYO + "\n"))),
        count("SELECT count(*) FROM " + COPYT)));

    step("copy_out_text", () -> copyOut("COPY (SELECT id, name, amount, data FROM " + COPYT + " ORDER BY id, name) TO STDOUT"));
    step("copy_out_csv", () -> copyOut("COPY (SELECT id, name, amount FROM " + COPYT + " ORDER BY id, name) TO STDOUT (FORMAT csv, HEADER)"));
    step("copy_out_binary", () -> copyOut("COPY (SELECT id, name, amount, data FROM " + COPYT + " ORDER BY id, name) TO STDOUT (FORMAT binary)"));

    step("copy_out_writer", () -> {
      StringWriter w = new StringWriter();
      long n = copyApi().copyOut("COPY (SELECT id, name FROM " + COPYT + " ORDER BY id, name) TO STDOUT (FORMAT csv)", w);
      return obj("rows", n, "data", norm(w.toString()));
    });

    step("copy_in_transaction", () -> {
      List<Object> out = new ArrayList<>();
      c.setAutoCommit(false);
      out.add(copyIn("COPY " + COPYT + " (id, name) FROM STDIN", utf8("30\tin txn\n31\tin txn\n")));
      out.add(status());
      out.add(copyOut("COPY (SELECT id, name FROM " + COPYT + " WHERE id >= 30 ORDER BY id) TO STDOUT (FORMAT csv)"));
      out.add(count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 30));
      c.rollback();
      out.add(count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 30));
      c.commit();
      // COPY as the transaction's first statement.
      out.add(copyIn("COPY " + COPYT + " (id, name) FROM STDIN (FORMAT csv)", utf8("32,committed\n")));
      out.add(status());
      c.commit();
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 30));
      return out;
    });

    step("copy_bad_row", () -> list(
        attempt(() -> copyIn("COPY " + COPYT + " (id, name) FROM STDIN", utf8("40\tgood\n41\tgood\n"), utf8("x42\tbad\n43\tgood\n"))),
        status(),
        count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 40),
        alive()));

    step("copy_bad_row_in_transaction", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(
          prep("INSERT INTO " + COPYT + " (id, name) VALUES (?, ?)", 50, "before copy"),
          attempt(() -> copyIn("COPY " + COPYT + " (id, name) FROM STDIN (FORMAT csv)", utf8("51,ok\n52,ok,extra\n"))),
          status(),
          attempt(() -> alive()));
      c.rollback();
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 50));
      return out;
    });

    step("copy_cancelled_by_client", () -> {
      List<Object> out = new ArrayList<>();
      out.add(attempt(() -> {
        CopyIn in = copyApi().copyIn("COPY " + COPYT + " (id, name) FROM STDIN");
        byte[] b = utf8("60\tsent\n61\tsent\n");
        in.writeToCopy(b, 0, b.length);
        in.cancelCopy();
        return obj("active", in.isActive());
      }));
      out.add(status());
      out.add(count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 60));
      out.add(alive());
      return out;
    });

    step("copy_cancelled_by_client_in_transaction", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(prep("INSERT INTO " + COPYT + " (id, name) VALUES (?, ?)", 62, "before copy"));
      out.add(attempt(() -> {
        CopyIn in = copyApi().copyIn("COPY " + COPYT + " (id, name) FROM STDIN");
        byte[] b = utf8("63\tsent\n");
        in.writeToCopy(b, 0, b.length);
        in.cancelCopy();
        return obj("active", in.isActive());
      }));
      out.add(status());
      out.add(attempt(() -> alive()));
      c.rollback();
      c.setAutoCommit(true);
      out.add(count("SELECT count(*) FROM " + COPYT + " WHERE id >= ?", 60));
      return out;
    });

    step("copy_out_error", () -> list(
        attempt(() -> copyOut("COPY (SELECT 1 / (3 - g) FROM generate_series(1, 5) g) TO STDOUT")),
        status(),
        alive()));

    step("copy_through_statement", () -> list(
        // COPY without CopyManager: pgjdbc refuses it, and the connection goes on.
        attempt(() -> exec("COPY (SELECT 1) TO STDOUT")),
        alive(),
        attempt(() -> exec("COPY " + COPYT + " (id, name) FROM STDIN")),
        alive(),
        count("SELECT count(*) FROM " + COPYT)));

    step("copy_many_rows", () -> {
      StringBuilder sb = new StringBuilder();
      for (int i = 1000; i < 11000; i++) sb.append(i).append("\tline ").append(i).append('\n');
      byte[] lines = utf8(sb.toString());
      List<byte[]> chunks = new ArrayList<>();
      for (int i = 0; i < lines.length; i += 65536) chunks.add(Arrays.copyOfRange(lines, i, Math.min(lines.length, i + 65536)));
      return list(
          copyIn("COPY " + COPYT + " (id, name) FROM STDIN", chunks.toArray(new byte[0][])),
          copyOut("COPY (SELECT id, name FROM " + COPYT + " WHERE id >= 1000 ORDER BY id) TO STDOUT"));
    });

    step("large_values", () -> {
      String text = largeText();
      byte[] data = largeBytes();
      return list(
          prep("SELECT ?::text AS t, length(?::text) AS n", text, text),
          prep("INSERT INTO " + BIG + " (id, body, data) VALUES (?, ?, ?)", 1, text, data),
          prep("SELECT body, data, md5(data) FROM " + BIG + " WHERE id = ?", 1),
          exec("SELECT length(body), md5(body), length(data) FROM " + BIG),
          copyOut("COPY (SELECT body, data FROM " + BIG + ") TO STDOUT"));
    });

    step("many_rows", () -> {
      Integer[] ids = new Integer[10000];
      for (int i = 0; i < ids.length; i++) ids[i] = i;
      List<Object> out = list(prep("INSERT INTO " + MANY + " (n, label) SELECT g, 'label ' || g FROM unnest(?::int[]) g",
          c.createArrayOf("int4", ids)));
      for (String sql : new String[] {
          "SELECT n, label FROM " + MANY + " ORDER BY n",
          "SELECT g, md5(g::text) FROM generate_series(1, 10000) g"}) {
        for (boolean prepared : new boolean[] {false, true}) {
          try (Statement s = prepared ? c.prepareStatement(sql) : c.createStatement()) {
            ResultSet rs = prepared ? ((PreparedStatement) s).executeQuery() : s.executeQuery(sql);
            Map<String, Object> r = rows(rs, false);
            List<?> rowList = (List<?>) r.get("rows");
            out.add(obj("count", rowList.size(), "sha256", digest(toJson(rowList)), "columns", r.get("columns")));
          }
        }
      }
      return out;
    });

    step("fetch_size_cursor", () -> {
      // In a transaction pgjdbc reads a named portal setFetchSize rows at a time (Execute with a row limit,
      // PortalSuspended), two at once here.
      List<Object> out = new ArrayList<>();
      c.setAutoCommit(false);
      try (PreparedStatement ps = c.prepareStatement("SELECT n, label FROM " + MANY + " WHERE n < ? ORDER BY n");
          PreparedStatement other = c.prepareStatement("SELECT g, md5(g::text) FROM generate_series(1, ?) g")) {
        ps.setFetchSize(333);
        ps.setInt(1, 5000);
        other.setFetchSize(7);
        other.setInt(1, 50);
        try (ResultSet rs = ps.executeQuery(); ResultSet rs2 = other.executeQuery()) {
          List<Object> first = new ArrayList<>();
          List<Object> rest = new ArrayList<>();
          List<Object> interleaved = new ArrayList<>();
          while (rs.next()) {
            List<Object> row = list(norm(rs.getObject(1)), norm(rs.getObject(2)));
            (first.size() < 10 ? first : rest).add(row);
            if (rest.size() % 100 == 1 && rs2.next()) interleaved.add(list(norm(rs2.getObject(1)), norm(rs2.getObject(2))));
          }
          int left = 0;
          while (rs2.next()) left++;
          out.add(obj("first", first, "rest", rest.size(), "sha256", digest(toJson(rest)), "interleaved", interleaved, "left", left));
        }
      }
      try (Statement s = c.createStatement()) {
        s.setFetchSize(100);
        try (ResultSet rs = s.executeQuery("SELECT g FROM generate_series(1, 1000) g")) {
          long sum = 0;
          int n = 0;
          while (rs.next()) {
            sum += rs.getInt(1);
            n++;
          }
          out.add(obj("statement_rows", n, "sum", sum));
        }
      }
      out.add(status());
      c.commit();
      c.setAutoCommit(true);
      // Outside a transaction the fetch size is ignored: every row at once.
      try (PreparedStatement ps = c.prepareStatement("SELECT n FROM " + MANY + " WHERE n < ? ORDER BY n")) {
        ps.setFetchSize(10);
        ps.setInt(1, 100);
        Map<String, Object> r = rows(ps.executeQuery(), false);
        out.add(obj("autocommit_rows", ((List<?>) r.get("rows")).size()));
      }
      out.add(alive());
      return out;
    });

    step("max_rows", () -> {
      // setMaxRows: Execute with a row limit on the unnamed portal, PortalSuspended, then Sync.
      List<Object> out = new ArrayList<>();
      try (Statement s = c.createStatement()) {
        s.setMaxRows(5);
        out.add(rows(s.executeQuery("SELECT g FROM generate_series(1, 100) g"), false));
      }
      try (PreparedStatement ps = c.prepareStatement("SELECT n, label FROM " + MANY + " WHERE n >= ? ORDER BY n")) {
        ps.setMaxRows(3);
        for (int i = 0; i < 6; i++) {
          ps.setInt(1, i * 10);
          out.add(rows(ps.executeQuery(), false));
        }
      }
      c.setAutoCommit(false);
      try (PreparedStatement ps = c.prepareStatement("SELECT n FROM " + MANY + " WHERE n >= ? ORDER BY n")) {
        ps.setMaxRows(4);
        ps.setFetchSize(2);
        ps.setInt(1, 9990);
        out.add(rows(ps.executeQuery(), false));
      }
      c.commit();
      c.setAutoCommit(true);
      out.add(alive());
      return out;
    });

    step("sql_cursor", () -> {
      c.setAutoCommit(false);
      List<Object> out = list(
          exec("DECLARE c1 CURSOR FOR SELECT g FROM generate_series(1, 10) g"),
          exec("FETCH 3 FROM c1"),
          exec("MOVE 2 IN c1; FETCH NEXT FROM c1"),
          attempt(() -> exec("FETCH FROM no_such_cursor")),
          status());
      c.rollback();
      c.setAutoCommit(true);
      return out;
    });

    step("final_state", () -> list(
        prep("SELECT count(*), sum(id), sum(amount), md5(string_agg(name, ',' ORDER BY id)) FROM " + ITEMS),
        prep("SELECT count(*), sum(id), md5(string_agg(coalesce(name, '-'), ',' ORDER BY id, name)) FROM " + COPYT),
        prep("SELECT count(*), sum(n) FROM " + MANY),
        status()));

    step("teardown", () -> exec(
        "DROP TABLE " + ITEMS + ", " + COPYT + ", " + BIG + ", " + MANY + "; DROP FUNCTION " + PREFIX
            + "noisy(int); DROP TYPE " + PREFIX + "mood, " + PREFIX + "pair"));
  }

  // ----------------------------------------------------------------------------------------------------------
  // Main
  // ----------------------------------------------------------------------------------------------------------

  /** postgresql://user:password@host:port/db?k=v... as a JDBC URL and properties. */
  static void parseUrl(String url) throws Exception {
    if (url.startsWith("jdbc:")) {
      jdbcUrl = url;
      return;
    }
    URI u = new URI(url);
    String info = u.getRawUserInfo();
    if (info != null) {
      int colon = info.indexOf(':');
      String user = colon < 0 ? info : info.substring(0, colon);
      baseProps.setProperty("user", URLDecoder.decode(user, StandardCharsets.UTF_8));
      if (colon >= 0) {
        baseProps.setProperty("password", URLDecoder.decode(info.substring(colon + 1), StandardCharsets.UTF_8));
      }
    }
    String db = u.getRawPath() == null ? "" : u.getRawPath().replaceFirst("^/", "");
    jdbcUrl = "jdbc:postgresql://" + u.getHost() + ":" + (u.getPort() < 0 ? 5432 : u.getPort()) + "/" + db;
    if (u.getRawQuery() != null) {
      for (String kv : u.getRawQuery().split("&")) {
        int eq = kv.indexOf('=');
        if (eq > 0) {
          baseProps.setProperty(URLDecoder.decode(kv.substring(0, eq), StandardCharsets.UTF_8),
              URLDecoder.decode(kv.substring(eq + 1), StandardCharsets.UTF_8));
        }
      }
    }
  }

  static void trace(String dir) throws Exception {
    String file = dir + "/jdbc-" + PREFIX + ".log";
    java.util.logging.Logger logger = java.util.logging.Logger.getLogger("org.postgresql");
    java.util.logging.FileHandler handler = new java.util.logging.FileHandler(file);
    handler.setLevel(java.util.logging.Level.FINEST);
    handler.setFormatter(new java.util.logging.Formatter() {
      @Override
      public String format(java.util.logging.LogRecord r) {
        return formatMessage(r) + System.lineSeparator();
      }
    });
    logger.addHandler(handler);
    logger.setLevel(java.util.logging.Level.FINEST);
    System.err.println("pgjdbc trace: " + file);
  }

  public static void main(String[] args) throws Exception {
    OUT = new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);
    if (args.length != 2) {
      System.err.println("usage: java -cp postgresql.jar Conformance.java URL PREFIX");
      System.exit(2);
    }
    PREFIX = args[1];
    ITEMS = PREFIX + "items";
    COPYT = PREFIX + "copy";
    BIG = PREFIX + "big";
    MANY = PREFIX + "many";
    parseUrl(args[0]);
    baseProps.putIfAbsent("connectTimeout", "10");
    // A hang shows as an error of its step instead of the test's timeout.
    baseProps.putIfAbsent("socketTimeout", "120");
    TimeZone.setDefault(TimeZone.getTimeZone("Asia/Kathmandu"));
    String traceDir = System.getenv("PGTENANT_JDBC_TRACE");
    if (traceDir != null && !traceDir.isEmpty()) trace(traceDir);

    emit(obj("step", "driver", "out", obj("driver", "pgjdbc", "version",
        org.postgresql.util.DriverInfo.MAJOR_VERSION + "." + org.postgresql.util.DriverInfo.MINOR_VERSION)));
    String[][] passes = {
      {"extended"},
      {"named", "prepareThreshold", "1"},
      {"simple", "preferQueryMode", "simple"},
    };
    for (String[] p : passes) {
      pass = p[0];
      c = connect(props(Arrays.copyOfRange(p, 1, p.length)));
      try {
        drainConnection(c);
        NOTICES.clear();
        steps();
      } finally {
        c.close();
      }
    }
    emit(obj("step", "end"));
  }
}
