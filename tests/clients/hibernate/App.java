// A Hibernate app with the tenant-independent configuration a Java shop writes (run by tests/orm_catalog.rs,
// and by capture.sh in this folder against PostgreSQL directly).
//
// Usage: java -cp <Hibernate 3.6 + pgjdbc jars> tests/clients/hibernate/App.java JDBC_URL USER PASSWORD
//
// Debian's libhibernate3-java (Hibernate 3.6.10, with dom4j, javassist, JTA, slf4j) and
// libpostgresql-jdbc-java (pgjdbc) provide the jars; Java's single-file source launcher compiles this file.
// The mapping names the schema the way Hibernate apps do: `hibernate.default_schema=public`, so every table,
// sequence and identity lookup is qualified with `public`. `hibernate.hbm2ddl.auto=validate` makes Hibernate
// check at start, through JDBC's DatabaseMetaData, that every mapped table and column exists in `public`:
// that is the catalog introspection this app exists to exercise. Then it writes and reads through the
// session (an identity insert, a sequence-generated insert, HQL, a native query) and prints one line per
// step, `step: result`, and `done` at the end. Any failure prints `error: <SQLSTATE> <message>` and exits 1.
//
// This file is ASCII.

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.sql.SQLException;
import java.util.List;

import org.hibernate.Session;
import org.hibernate.SessionFactory;
import org.hibernate.Transaction;
import org.hibernate.cfg.Configuration;

public class App {
    // The table is created by the test (schema.sql), not by Hibernate: validate only checks.
    static final String MAPPING = String.join("\n",
        "<?xml version=\"1.0\"?>",
        "<!DOCTYPE hibernate-mapping PUBLIC \"-//Hibernate/Hibernate Mapping DTD 3.0//EN\"",
        "  \"http://www.hibernate.org/dtd/hibernate-mapping-3.0.dtd\">",
        "<hibernate-mapping>",
        "  <class entity-name=\"Widget\" table=\"widgets\">",
        "    <id name=\"id\" type=\"long\" column=\"id\"><generator class=\"identity\"/></id>",
        "    <property name=\"name\" type=\"string\" column=\"name\" not-null=\"true\"/>",
        "    <property name=\"price\" type=\"big_decimal\" column=\"price\"/>",
        "  </class>",
        "  <class entity-name=\"Gadget\" table=\"gadgets\">",
        "    <id name=\"id\" type=\"long\" column=\"id\">",
        "      <generator class=\"sequence\"><param name=\"sequence\">gadget_ids</param></generator>",
        "    </id>",
        "    <property name=\"label\" type=\"string\" column=\"label\"/>",
        "  </class>",
        "</hibernate-mapping>");

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: App JDBC_URL USER PASSWORD");
            System.exit(2);
        }
        Configuration cfg = new Configuration()
            .setProperty("hibernate.connection.driver_class", "org.postgresql.Driver")
            .setProperty("hibernate.connection.url", args[0])
            .setProperty("hibernate.connection.username", args[1])
            .setProperty("hibernate.connection.password", args[2])
            .setProperty("hibernate.connection.pool_size", "1")
            .setProperty("hibernate.dialect", "org.hibernate.dialect.PostgreSQLDialect")
            .setProperty("hibernate.default_schema", "public")
            .setProperty("hibernate.hbm2ddl.auto", "validate")
            .setProperty("hibernate.default_entity_mode", "dynamic-map")
            .addInputStream(new ByteArrayInputStream(MAPPING.getBytes(StandardCharsets.US_ASCII)));
        SessionFactory factory;
        try {
            factory = cfg.buildSessionFactory();
        } catch (RuntimeException e) {
            fail(e);
            return;
        }
        System.out.println("validate: ok");
        try {
            Session session = factory.openSession();
            Transaction tx = session.beginTransaction();
            java.util.Map<String, Object> widget = new java.util.HashMap<>();
            widget.put("name", "sprocket");
            widget.put("price", new java.math.BigDecimal("9.50"));
            session.save("Widget", widget);
            System.out.println("identity insert: id " + (((Long) widget.get("id")) > 0 ? "assigned" : "missing"));
            java.util.Map<String, Object> gadget = new java.util.HashMap<>();
            gadget.put("label", "gizmo");
            session.save("Gadget", gadget);
            System.out.println("sequence insert: id " + (((Long) gadget.get("id")) > 0 ? "assigned" : "missing"));
            tx.commit();
            List<?> names = session.createQuery("select w.name from Widget w where w.price > 1 order by w.name").list();
            System.out.println("hql: " + names);
            Object count = session.createSQLQuery("select count(*) from public.gadgets").uniqueResult();
            System.out.println("native: " + count);
            session.close();
        } catch (RuntimeException e) {
            fail(e);
            return;
        } finally {
            factory.close();
        }
        System.out.println("done");
    }

    static void fail(Throwable e) {
        for (Throwable c = e; c != null; c = c.getCause()) {
            if (c instanceof SQLException) {
                System.out.println("error: " + ((SQLException) c).getSQLState() + " " + c.getMessage());
                System.exit(1);
            }
        }
        System.out.println("error: none " + e);
        System.exit(1);
    }
}
