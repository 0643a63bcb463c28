# A Rails (Active Record) app with the tenant-independent configuration a Rails shop writes (run by
# tests/orm_catalog.rs, and by tests/clients/capture.sh against PostgreSQL directly).
#
# Usage: ruby tests/clients/rails/app.rb DATABASE_URL [advisory_locks=false]
#
# Debian's ruby-activerecord (Active Record 6.1) and ruby-pg provide the gems. The connection has
# `schema_search_path: public`, as in a database.yml, so Active Record sends `SET search_path TO public` on
# connect. Then what `rails db:migrate` does (schema_migrations and ar_internal_metadata checked and created,
# an advisory lock, two migrations, each in a transaction), what a model does at first use (columns, primary
# key and types read from the catalog), what `rails db:schema:dump` reads (tables, indexes, foreign keys),
# `needs_migration?`, and writes and reads through the models. One line per step, `step: result`; `done` at
# the end. Any failure prints `error: <SQLSTATE> <message>` and exits 1. The lists of tables name the app's own
# tables only (a tenant's schema also holds its product tables). `advisory_locks=false` is the database.yml
# setting Rails apps use behind a transaction pooler: no session advisory lock around migrations.
require "active_record"
require "stringio"

url = ARGV.fetch(0) { abort "usage: app.rb DATABASE_URL [advisory_locks=false]" }
advisory_locks = ARGV[1] != "advisory_locks=false"
APP_TABLES = %w[ar_internal_metadata authors books schema_migrations].freeze
ActiveRecord::Base.logger = nil
ActiveRecord::Migration.verbose = false
ActiveRecord::Base.establish_connection(
  url: url, schema_search_path: "public", prepared_statements: true, advisory_locks: advisory_locks
)

class CreateAuthors < ActiveRecord::Migration[6.1]
  def change
    create_table :authors do |t|
      t.string :name, null: false
      t.timestamps
    end
    add_index :authors, :name, unique: true
  end
end

class CreateBooks < ActiveRecord::Migration[6.1]
  def change
    create_table :books do |t|
      t.references :author, null: false, foreign_key: true
      t.string :title
      t.decimal :price, precision: 8, scale: 2
      t.timestamps
    end
  end
end

class Author < ActiveRecord::Base
  has_many :books
end

class Book < ActiveRecord::Base
  belongs_to :author
end

def step(name)
  puts "#{name}: #{yield}"
rescue ActiveRecord::StatementInvalid => e
  state = e.cause.respond_to?(:result) && e.cause.result ? e.cause.result.error_field(PG::PG_DIAG_SQLSTATE) : "none"
  puts "error: #{state} #{e.message.lines.first.strip}"
  exit 1
end

migrations = [CreateAuthors.new("CreateAuthors", 1), CreateBooks.new("CreateBooks", 2)]
connection = ActiveRecord::Base.connection
step("schema_search_path") { connection.schema_search_path }
step("pending before") do
  ActiveRecord::Migrator.new(:up, migrations, ActiveRecord::SchemaMigration).pending_migrations.size
end
step("migrate") do
  ActiveRecord::Migrator.new(:up, migrations, ActiveRecord::SchemaMigration).migrate
  ActiveRecord::SchemaMigration.all_versions.join(",")
end
step("pending after") do
  ActiveRecord::Migrator.new(:up, migrations, ActiveRecord::SchemaMigration).pending_migrations.size
end
step("table_exists") { %w[authors books public.authors schema_migrations].map { |t| connection.table_exists?(t) }.join(",") }
step("tables") { (connection.tables & APP_TABLES).sort.join(",") }
step("columns") { Book.columns.map { |c| "#{c.name}:#{c.sql_type}" }.join(",") }
step("primary_key") { connection.primary_key("books") }
step("indexes") { connection.indexes("authors").map(&:name).join(",") }
step("foreign_keys") { connection.foreign_keys("books").map { |fk| "#{fk.to_table}.#{fk.primary_key}" }.join(",") }
step("schema dump") do
  io = StringIO.new
  ActiveRecord::SchemaDumper.dump(connection, io)
  io.string.scan(/create_table "(\w+)"|add_foreign_key "(\w+)"/).flatten.compact.select { |t| APP_TABLES.include?(t) }.join(",")
end
step("create") do
  author = Author.create!(name: "Ursula")
  author.books.create!(title: "The Dispossessed", price: 12.5)
  author.books.create!(title: "The Lathe of Heaven", price: 9)
  Book.count
end
step("query") { Author.find_by!(name: "Ursula").books.where("price > ?", 10).pluck(:title).join(",") }
step("reset_column_information") do
  Book.reset_column_information
  Book.column_names.size
end
puts "done"
