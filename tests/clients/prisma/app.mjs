// pgtenant's Prisma test app: an ordinary Prisma 7 app (generated client + @prisma/adapter-pg, so no engine
// binary), its models in the default `public` schema, driven by tests/orm_prisma.rs.
//
//   node app.mjs URL LABEL [--schema NAME]
//
// URL is a postgresql:// connection URL (through pgtenant: the user's email and token). LABEL marks every row
// this run creates (emails, titles), so that a reader can tell whose rows it sees. --schema passes the
// adapter's `schema` option (Prisma's way, with a driver adapter, of using a schema other than `public`); the
// tests never use it: the point is that the app runs unchanged, `public` and all.
//
// The app empties its two tables, then does create (nested), createMany, createManyAndReturn, findMany with
// include, findUnique with _count, an interactive $transaction (and one that throws and must leave nothing),
// a unique and a foreign key violation, a batch $transaction, $queryRaw / $executeRaw / $queryRawUnsafe (unqualified and "public"-qualified names),
// update, updateMany, upsert, delete, count, groupBy, then reads everything back and prints one JSON line:
// the summary tests/orm_prisma.rs checks. Any error: message on stderr, exit code 1.

import { createRequire } from 'node:module';
import { PrismaPg } from '@prisma/adapter-pg';

const require = createRequire(import.meta.url);
const { PrismaClient, Prisma } = require('./generated/client');

function usage() {
  console.error('usage: node app.mjs URL LABEL [--schema NAME]');
  process.exit(2);
}

const args = process.argv.slice(2);
if (args.length !== 2 && args.length !== 4) usage();
const [url, label] = args;
let schema;
if (args.length === 4) {
  if (args[2] !== '--schema') usage();
  schema = args[3];
}
if (!/^[a-z0-9_-]+$/i.test(label)) usage();

const adapter = new PrismaPg({ connectionString: url }, schema ? { schema } : undefined);
const prisma = new PrismaClient({ adapter });

const email = (who) => `${who}@${label}.example`;
const steps = [];
const step = (name, value) => {
  steps.push(name);
  return value;
};

async function main() {
  // A clean start: the run's counts and ids below are the whole content of the tables.
  step('deleteMany', [await prisma.post.deleteMany(), await prisma.user.deleteMany()]);

  // create, with nested writes (Prisma wraps them in a transaction of its own).
  const alice = step(
    'create nested',
    await prisma.user.create({
      data: {
        email: email('alice'),
        name: `Alice ${label}`,
        role: 'ADMIN',
        posts: {
          create: [
            { title: `${label}: hello`, body: 'first', published: true, tags: ['intro', label] },
            { title: `${label}: draft`, tags: [] },
          ],
        },
      },
      include: { posts: { orderBy: { id: 'asc' } } },
    }),
  );

  // createMany (skipDuplicates: ON CONFLICT DO NOTHING; one of them is a duplicate of alice).
  const many = step(
    'createMany',
    await prisma.user.createMany({
      data: [
        { email: email('bob'), name: `Bob ${label}` },
        { email: email('carol'), name: `Carol ${label}` },
        { email: email('alice'), name: 'duplicate' },
      ],
      skipDuplicates: true,
    }),
  );

  const bob = await prisma.user.findUniqueOrThrow({ where: { email: email('bob') } });
  const carol = await prisma.user.findUniqueOrThrow({ where: { email: email('carol') } });

  // createManyAndReturn
  const returned = step(
    'createManyAndReturn',
    await prisma.post.createManyAndReturn({
      data: [
        { title: `${label}: bob one`, authorId: bob.id, tags: ['b'] },
        { title: `${label}: bob two`, authorId: bob.id, published: true },
        { title: `${label}: carol one`, authorId: carol.id },
      ],
      select: { id: true, title: true },
    }),
  );

  // findMany with relations (one joined query: LATERAL subqueries building JSON), filters on the enum and on
  // the relation; then the default strategy (join, with the relationJoins preview feature).
  const admins = step(
    'findMany include',
    await prisma.user.findMany({
      relationLoadStrategy: 'join',
      where: { role: 'ADMIN', posts: { some: { published: true } } },
      include: { posts: { where: { published: true }, orderBy: { id: 'asc' } } },
    }),
  );
  const postsWithAuthor = step(
    'findMany post include author',
    await prisma.post.findMany({
      where: { tags: { has: label } },
      include: { author: { select: { email: true, role: true } } },
    }),
  );

  const bobCounted = step(
    'findUnique _count',
    await prisma.user.findUnique({
      where: { email: email('bob') },
      select: { id: true, _count: { select: { posts: true } } },
    }),
  );

  // Errors as apps catch them: a unique violation (P2002) and a foreign key violation (P2003), with the
  // constraint names Prisma takes from PostgreSQL's error fields.
  const errors = {};
  const prismaError = (e) => {
    const cause = e.meta?.driverAdapterError?.cause;
    return `${e.code} ${cause?.constraint?.index ?? JSON.stringify(e.meta)}`;
  };
  try {
    await prisma.user.create({ data: { email: email('bob') } });
    errors.duplicate = 'no error';
  } catch (e) {
    errors.duplicate = prismaError(e);
  }
  try {
    await prisma.post.create({ data: { title: `${label}: orphan`, authorId: 2147483647 } });
    errors.foreignKey = 'no error';
  } catch (e) {
    errors.foreignKey = prismaError(e);
  }
  step('errors', errors);

  // Interactive transaction: a write, a read inside it, another write that depends on it.
  const interactive = step(
    'interactive $transaction',
    await prisma.$transaction(async (tx) => {
      const post = await tx.post.create({
        data: { title: `${label}: carol two`, authorId: carol.id, published: true },
      });
      const n = await tx.post.count({ where: { authorId: carol.id } });
      await tx.user.update({ where: { id: carol.id }, data: { name: `Carol ${label} (${n} posts)` } });
      return { postId: post.id, carolPosts: n };
    }),
  );

  // Interactive transaction that fails: nothing of it may remain.
  let rolledBack = false;
  try {
    await prisma.$transaction(async (tx) => {
      await tx.user.create({ data: { email: email('ghost'), name: 'never committed' } });
      throw new Error('rollback on purpose');
    });
  } catch (e) {
    rolledBack = e.message === 'rollback on purpose';
  }
  const ghost = await prisma.user.findUnique({ where: { email: email('ghost') } });
  step('interactive $transaction rolled back', null);

  // Batch transaction (sent as BEGIN … COMMIT around the statements).
  const [published, dave, postCount] = step(
    'batch $transaction',
    await prisma.$transaction([
      prisma.post.updateMany({ where: { authorId: bob.id }, data: { published: true } }),
      prisma.user.create({ data: { email: email('dave'), name: `Dave ${label}` } }),
      prisma.post.count(),
    ]),
  );

  // Raw queries, as apps write them: unqualified names and names qualified with "public".
  const pattern = `%@${label}.example`;
  const rawCount = step(
    '$queryRaw unqualified',
    await prisma.$queryRaw`SELECT count(*)::int AS n FROM "User" WHERE "email" LIKE ${pattern}`,
  );
  const rawQualified = step(
    '$queryRaw public-qualified',
    await prisma.$queryRaw`SELECT u."email", count(p."id")::int AS posts
                           FROM "public"."User" u LEFT JOIN public."Post" p ON p."authorId" = u."id"
                           GROUP BY u."email" ORDER BY u."email"`,
  );
  const rawExec = step(
    '$executeRaw',
    await prisma.$executeRaw`UPDATE "public"."Post" SET "body" = coalesce("body", '') || ${' (raw)'} WHERE "authorId" = ${bob.id}`,
  );
  const unsafe = step(
    '$queryRawUnsafe',
    await prisma.$queryRawUnsafe('SELECT "title" FROM public."Post" WHERE "authorId" = $1 ORDER BY "id"', carol.id),
  );
  const where = step(
    '$queryRaw current_schema',
    await prisma.$queryRaw`SELECT current_schema() AS schema, current_user AS role`,
  );

  // update, upsert (update and insert), delete.
  step('update', await prisma.user.update({ where: { id: bob.id }, data: { role: 'ADMIN' } }));
  step(
    'upsert update',
    await prisma.user.upsert({
      where: { email: email('dave') },
      update: { name: `Dave ${label} (upserted)` },
      create: { email: email('dave'), name: 'not created' },
    }),
  );
  step(
    'upsert create',
    await prisma.user.upsert({
      where: { email: email('erin') },
      update: { name: 'not updated' },
      create: { email: email('erin'), name: `Erin ${label}` },
    }),
  );
  const draft = alice.posts.find((p) => !p.published);
  step('delete', await prisma.post.delete({ where: { id: draft.id } }));
  step('delete user cascade', await prisma.user.delete({ where: { email: email('erin') } }));

  const byRole = step(
    'groupBy',
    await prisma.user.groupBy({ by: ['role'], _count: { _all: true }, orderBy: { role: 'asc' } }),
  );

  // Everything the tenant can see, read back (relations loaded with a second query: WHERE "authorId" IN …).
  const users = step(
    'findMany all',
    await prisma.user.findMany({
      relationLoadStrategy: 'query',
      orderBy: { id: 'asc' },
      include: { posts: { orderBy: { id: 'asc' }, select: { id: true, title: true, published: true } } },
    }),
  );
  const posts = await prisma.post.findMany({ orderBy: { id: 'asc' }, select: { id: true } });

  return {
    label,
    schema: where[0].schema,
    role: where[0].role,
    steps: steps.length,
    users: users.length,
    posts: posts.length,
    userIds: users.map((u) => u.id),
    postIds: posts.map((p) => p.id),
    emails: users.map((u) => u.email),
    postTitles: users.flatMap((u) => u.posts.map((p) => p.title)),
    usersByRole: Object.fromEntries(byRole.map((g) => [g.role, g._count._all])),
    checks: {
      nestedCreatePosts: alice.posts.length,
      createManyCount: many.count,
      createManyAndReturn: returned.length,
      adminsWithPublished: admins.map((u) => [u.email, u.posts.length]),
      postsTaggedWithLabel: postsWithAuthor.map((p) => [p.title, p.author.email, p.author.role]),
      bobPostCount: bobCounted._count.posts,
      errors,
      interactive,
      rolledBack: rolledBack && ghost === null,
      batch: { published: published.count, dave: dave.email, postCount },
      rawCount: rawCount[0].n,
      rawQualified: rawQualified.map((r) => [r.email, r.posts]),
      rawExecuted: rawExec,
      rawUnsafe: unsafe.map((r) => r.title),
    },
  };
}

try {
  const summary = await main();
  console.log(JSON.stringify(summary));
  await prisma.$disconnect();
} catch (e) {
  console.error(e instanceof Prisma.PrismaClientKnownRequestError ? `${e.code}: ${e.message}` : e);
  await prisma.$disconnect().catch(() => {});
  process.exit(1);
}
