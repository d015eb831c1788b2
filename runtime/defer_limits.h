/* The limits a job must respect to be deferred: one source for the Lua defer path (app.c) and
 * the C client (runtime/client/). Plain macros: no Lua, no libpq. */
#ifndef TARRY_DEFER_LIMITS_H
#define TARRY_DEFER_LIMITS_H

#define MAX_NAME_CHARS 128
#define MAX_QUEUE_BYTES 40                   /* "procrastinate_queue_v1#" + queue < 64 bytes */
/* Locks and queueing locks are btree keys: an index entry holds at most 2704 bytes with 8 kB
   pages (about 2680 of incompressible text beside the id in procrastinate_jobs_id_lock_idx_v1).
   1000 bytes leaves room for that and for smaller pages. */
#define MAX_LOCK_BYTES 1000
/* One job's arguments, as JSON text: far beyond any sane payload (pass a reference to bulk
   data), far below jsonb's 255 MB, and small enough that a worker fetching a batch of them
   does not run out of memory. */
#define MAX_ARGS_BYTES (16 * 1024 * 1024)
/* Later times are clamped to 9999-12-31 23:59:59.999999 UTC, as Procrastinate does: in SQL (LEAST)
   because that instant has no exact double; here only so to_timestamp() stays in range. */
#define MAX_SCHEDULE 253402300800.0

#endif
