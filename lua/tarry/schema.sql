-- tarry's database schema: the Procrastinate 3.9 job-queue schema (types, tables, indexes,
-- sequences and stored functions of /work/shared/PROTOCOL.md sections 2-5), written for tarry.
--
-- Everything except the triggers is catalog-identical to Procrastinate's own schema, so Python
-- workers and tarry workers can share the tables.  The triggers deliberately differ: instead of
-- Procrastinate's seven row-level triggers, tarry installs statement-level triggers (named tarry_*)
-- that write exactly the same event rows and send the same notifications (one job_inserted NOTIFY
-- per queue and statement instead of one per row); only the delete trigger stays row-level (see
-- there why).  Procrastinate's trigger functions are still defined here, because they belong to
-- the catalog and spec/fixtures/procrastinate_triggers.sql attaches them when a test needs a
-- database that looks Procrastinate-applied.
--
-- Usage: plain statements, applied once inside one transaction that the caller opens (psql -f,
-- or one PQexec of the whole text).  Not idempotent: a second application fails with 42710.
-- No object is schema-qualified: everything goes into the first schema of search_path.

CREATE EXTENSION IF NOT EXISTS plpgsql;

-- §2 Types ----------------------------------------------------------------------------------------

CREATE TYPE procrastinate_job_status AS ENUM (
    'todo',
    'doing',
    'succeeded',
    'failed',
    'cancelled',
    'aborting',  -- legacy, never written since Procrastinate 3.0; kept for catalog identity
    'aborted'
);

CREATE TYPE procrastinate_job_event_type AS ENUM (
    'deferred',
    'started',
    'deferred_for_retry',
    'failed',
    'succeeded',
    'cancelled',
    'abort_requested',
    'aborted',
    'scheduled',
    'retried'
);

CREATE TYPE procrastinate_job_to_defer_v1 AS (
    queue_name character varying,
    task_name character varying,
    priority integer,
    lock text,
    queueing_lock text,
    args jsonb,
    scheduled_at timestamp with time zone
);

-- §3 Tables (columns in physical order: fetch returns the procrastinate_jobs row type) -----------

CREATE TABLE procrastinate_workers (
    id bigint GENERATED ALWAYS AS IDENTITY,
    last_heartbeat timestamp with time zone NOT NULL DEFAULT now(),
    CONSTRAINT procrastinate_workers_pkey PRIMARY KEY (id)
);

CREATE TABLE procrastinate_jobs (
    id bigserial,
    queue_name character varying(128) NOT NULL,
    task_name character varying(128) NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    lock text,
    queueing_lock text,
    args jsonb NOT NULL DEFAULT '{}'::jsonb,
    status procrastinate_job_status NOT NULL DEFAULT 'todo'::procrastinate_job_status,
    scheduled_at timestamp with time zone,
    attempts integer NOT NULL DEFAULT 0,
    abort_requested boolean NOT NULL DEFAULT false,
    worker_id bigint,
    CONSTRAINT procrastinate_jobs_pkey PRIMARY KEY (id),
    CONSTRAINT check_not_todo_abort_requested
        CHECK (NOT (status = 'todo'::procrastinate_job_status AND abort_requested = true)),
    CONSTRAINT procrastinate_jobs_worker_id_fkey
        FOREIGN KEY (worker_id) REFERENCES procrastinate_workers (id) ON DELETE SET NULL
);

CREATE TABLE procrastinate_periodic_defers (
    id bigserial,
    task_name character varying(128) NOT NULL,
    defer_timestamp bigint,
    job_id bigint,
    periodic_id character varying(128) NOT NULL DEFAULT ''::character varying,
    CONSTRAINT procrastinate_periodic_defers_pkey PRIMARY KEY (id),
    CONSTRAINT procrastinate_periodic_defers_unique UNIQUE (task_name, periodic_id, defer_timestamp),
    -- No ON DELETE action: the delete trigger unlinks markers before a job row goes away.
    CONSTRAINT procrastinate_periodic_defers_job_id_fkey
        FOREIGN KEY (job_id) REFERENCES procrastinate_jobs (id)
);

CREATE TABLE procrastinate_events (
    id bigserial,
    job_id bigint NOT NULL,
    type procrastinate_job_event_type,
    at timestamp with time zone DEFAULT now(),
    CONSTRAINT procrastinate_events_pkey PRIMARY KEY (id),
    CONSTRAINT procrastinate_events_job_id_fkey
        FOREIGN KEY (job_id) REFERENCES procrastinate_jobs (id) ON DELETE CASCADE
);

-- Indexes ------------------------------------------------------------------------------------------

CREATE INDEX idx_procrastinate_workers_last_heartbeat
    ON procrastinate_workers (last_heartbeat);

-- Python recognises AlreadyEnqueued by this exact name: keep it a plain single-column index.
CREATE UNIQUE INDEX procrastinate_jobs_queueing_lock_idx_v1
    ON procrastinate_jobs (queueing_lock) WHERE status = 'todo'::procrastinate_job_status;
-- Safety net: two same-lock jobs can never both be doing.
CREATE UNIQUE INDEX procrastinate_jobs_lock_idx_v1
    ON procrastinate_jobs (lock) WHERE status = 'doing'::procrastinate_job_status;
CREATE INDEX idx_procrastinate_jobs_worker_not_null
    ON procrastinate_jobs (worker_id)
    WHERE worker_id IS NOT NULL AND status = 'doing'::procrastinate_job_status;
CREATE INDEX procrastinate_jobs_queue_name_idx_v1
    ON procrastinate_jobs (queue_name);
CREATE INDEX procrastinate_jobs_id_lock_idx_v1
    ON procrastinate_jobs (id, lock)
    WHERE status = ANY (ARRAY['todo'::procrastinate_job_status, 'doing'::procrastinate_job_status]);
CREATE INDEX procrastinate_jobs_priority_idx_v1
    ON procrastinate_jobs (priority DESC, id ASC) WHERE status = 'todo'::procrastinate_job_status;

CREATE INDEX procrastinate_periodic_defers_job_id_fkey_v1
    ON procrastinate_periodic_defers (job_id);

CREATE INDEX procrastinate_events_job_id_fkey_v1
    ON procrastinate_events (job_id);

-- §4 Functions -------------------------------------------------------------------------------------
-- All LANGUAGE plpgsql, VOLATILE, not STRICT (NULL arguments mean something), SECURITY INVOKER.
-- Errors of their own are RAISE without SQLSTATE, i.e. P0001.

-- §4.1: one INSERT for the whole batch; returns the ids in input order, NULL for an empty batch.
CREATE FUNCTION procrastinate_defer_jobs_v1(jobs procrastinate_job_to_defer_v1[])
RETURNS bigint[]
LANGUAGE plpgsql
AS $$
DECLARE
    new_ids bigint[];
BEGIN
    -- The ORDER BY makes the id defaults get drawn in array order, so sorting the ids gives
    -- back the input order.  Explicit NULL fields are inserted as NULL (no default applies).
    WITH inserted AS (
        INSERT INTO procrastinate_jobs
            (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
        SELECT j.queue_name, j.task_name, j.priority, j.lock, j.queueing_lock, j.args, j.scheduled_at
        FROM unnest(jobs) WITH ORDINALITY
             AS j (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at, position)
        ORDER BY j.position
        RETURNING id
    )
    SELECT array_agg(inserted.id ORDER BY inserted.id) INTO new_ids FROM inserted;
    RETURN new_ids;  -- array_agg over no rows is NULL, as the protocol wants
END;
$$;

-- §4.2: at most one job per (task, periodic id, tick), across all workers.
CREATE FUNCTION procrastinate_defer_periodic_job_v2(
    _queue_name character varying,
    _lock character varying,
    _queueing_lock character varying,
    _task_name character varying,
    _priority integer,
    _periodic_id character varying,
    _defer_timestamp bigint,
    _args jsonb
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    _marker_id bigint;
    _new_job_id bigint;
BEGIN
    INSERT INTO procrastinate_periodic_defers (task_name, periodic_id, defer_timestamp)
    VALUES (_task_name, _periodic_id, _defer_timestamp)
    ON CONFLICT DO NOTHING
    RETURNING id INTO _marker_id;

    IF _marker_id IS NULL THEN
        RETURN NULL;  -- this tick was already deferred (by us or by another worker)
    END IF;

    -- A queueing-lock conflict here raises 23505 and takes the marker down with it.
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock, args)
    VALUES (_queue_name, _task_name, _priority, _lock, _queueing_lock, _args)
    RETURNING id INTO _new_job_id;

    UPDATE procrastinate_periodic_defers SET job_id = _new_job_id WHERE id = _marker_id;

    -- Keep only the newest marker (and later ones): lock the older ones in id order first,
    -- so concurrent callers lock them in the same order.
    DELETE FROM procrastinate_periodic_defers
    WHERE id IN (
        SELECT older.id
        FROM procrastinate_periodic_defers AS older
        WHERE older.task_name = _task_name
          AND older.periodic_id = _periodic_id
          AND older.defer_timestamp < _defer_timestamp
        ORDER BY older.id
        FOR UPDATE
    );

    RETURN _new_job_id;
END;
$$;

-- §4.3: take the best eligible todo job; always returns one row (all NULL when none).
CREATE FUNCTION procrastinate_fetch_job_v2(target_queue_names character varying[], p_worker_id bigint)
RETURNS procrastinate_jobs
LANGUAGE plpgsql
AS $$
DECLARE
    found_job procrastinate_jobs;
BEGIN
    -- The rules live once, in tarry_fetch_jobs_v1 (below): eligibility, order, the lock rule,
    -- SKIP LOCKED. One job here.
    SELECT * INTO found_job FROM tarry_fetch_jobs_v1(target_queue_names, p_worker_id, 1);
    RETURN found_job;  -- nothing found: an unassigned row variable, every field NULL
END;
$$;

-- §4.4
CREATE FUNCTION procrastinate_finish_job_v1(job_id bigint, end_status procrastinate_job_status, delete_job boolean)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    _finished_id bigint;
BEGIN
    -- Checked before anything else, even when the job is to be deleted.  A NULL status is not
    -- one of the three either.
    IF end_status IS NULL OR end_status NOT IN ('succeeded', 'failed', 'aborted') THEN
        RAISE 'End status should be either "succeeded", "failed" or "aborted" (job id: %)', job_id;
    END IF;

    IF delete_job THEN
        DELETE FROM procrastinate_jobs
        WHERE id = job_id AND status IN ('todo', 'doing')
        RETURNING id INTO _finished_id;
    ELSE
        UPDATE procrastinate_jobs
        SET status = end_status,
            abort_requested = false,
            -- only a job that actually ran counts as an attempt
            attempts = CASE WHEN status = 'doing' THEN attempts + 1 ELSE attempts END
        WHERE id = job_id AND status IN ('todo', 'doing')
        RETURNING id INTO _finished_id;
    END IF;

    IF _finished_id IS NULL THEN
        RAISE 'Job was not found or not in "doing" or "todo" status (job id: %)', job_id;
    END IF;
END;
$$;

-- §4.5
CREATE FUNCTION procrastinate_cancel_job_v1(job_id bigint, abort boolean, delete_job boolean)
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    _cancelled_id bigint;
BEGIN
    IF delete_job THEN
        DELETE FROM procrastinate_jobs
        WHERE id = job_id AND status = 'todo'
        RETURNING id INTO _cancelled_id;
    END IF;

    IF _cancelled_id IS NULL THEN
        IF abort THEN
            -- One UPDATE for both cases: a todo job is cancelled, a doing job keeps running
            -- with the flag set (its worker is told by the abort NOTIFY).
            UPDATE procrastinate_jobs
            SET abort_requested = true,
                status = CASE WHEN status = 'todo' THEN 'cancelled'::procrastinate_job_status
                              ELSE status END
            WHERE id = job_id AND status IN ('todo', 'doing')
            RETURNING id INTO _cancelled_id;
        ELSE
            UPDATE procrastinate_jobs
            SET status = 'cancelled'
            WHERE id = job_id AND status = 'todo'
            RETURNING id INTO _cancelled_id;
        END IF;
    END IF;

    RETURN _cancelled_id;
END;
$$;

-- §4.6
CREATE FUNCTION procrastinate_retry_job_v2(
    job_id bigint,
    retry_at timestamp with time zone,
    new_priority integer,
    new_queue_name character varying,
    new_lock character varying
)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    _current_status procrastinate_job_status;
    _abort_requested boolean;
    _retried_id bigint;
BEGIN
    SELECT status, abort_requested INTO _current_status, _abort_requested
    FROM procrastinate_jobs
    WHERE id = job_id AND status IN ('doing', 'failed')
    FOR UPDATE;

    IF _current_status = 'doing' AND _abort_requested THEN
        -- An abort was asked for: the job ends failed instead of running again.
        UPDATE procrastinate_jobs
        SET status = 'failed'
        WHERE id = job_id
        RETURNING id INTO _retried_id;
    ELSE
        UPDATE procrastinate_jobs
        SET status = 'todo',
            attempts = attempts + 1,
            scheduled_at = retry_at,
            priority = COALESCE(new_priority, priority),
            queue_name = COALESCE(new_queue_name, queue_name),
            lock = COALESCE(new_lock, lock)
        WHERE id = job_id AND status IN ('doing', 'failed')
        RETURNING id INTO _retried_id;
    END IF;

    IF _retried_id IS NULL THEN
        RAISE 'Job was not found or has an invalid status to retry (job id: %)', job_id;
    END IF;
END;
$$;

-- §4.7: legacy; only doing jobs qualify.  Kept because it is part of the 3.9 catalog.
CREATE FUNCTION procrastinate_retry_job_v1(
    job_id bigint,
    retry_at timestamp with time zone,
    new_priority integer,
    new_queue_name character varying,
    new_lock character varying
)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    _abort_requested boolean;
    _retried_id bigint;
BEGIN
    SELECT abort_requested INTO _abort_requested
    FROM procrastinate_jobs
    WHERE id = job_id AND status = 'doing'
    FOR UPDATE;

    IF _abort_requested THEN
        UPDATE procrastinate_jobs
        SET status = 'failed'
        WHERE id = job_id
        RETURNING id INTO _retried_id;
    ELSE
        UPDATE procrastinate_jobs
        SET status = 'todo',
            attempts = attempts + 1,
            scheduled_at = retry_at,
            priority = COALESCE(new_priority, priority),
            queue_name = COALESCE(new_queue_name, queue_name),
            lock = COALESCE(new_lock, lock)
        WHERE id = job_id AND status = 'doing'
        RETURNING id INTO _retried_id;
    END IF;

    IF _retried_id IS NULL THEN
        RAISE 'Job was not found or not in "doing" status (job id: %)', job_id;
    END IF;
END;
$$;

-- §4.8 Worker liveness

CREATE FUNCTION procrastinate_register_worker_v1()
RETURNS TABLE(worker_id bigint)
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN QUERY
        INSERT INTO procrastinate_workers DEFAULT VALUES
        RETURNING procrastinate_workers.id;
END;
$$;

-- Deleting the row lets the FK's ON DELETE SET NULL detach every job of that worker.
CREATE FUNCTION procrastinate_unregister_worker_v1(worker_id bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM procrastinate_workers
    WHERE id = procrastinate_unregister_worker_v1.worker_id;
END;
$$;

CREATE FUNCTION procrastinate_update_heartbeat_v1(worker_id bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE procrastinate_workers
    SET last_heartbeat = now()
    WHERE id = procrastinate_update_heartbeat_v1.worker_id;
END;
$$;

CREATE FUNCTION procrastinate_prune_stalled_workers_v1(seconds_since_heartbeat double precision)
RETURNS TABLE(worker_id bigint)
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN QUERY
        DELETE FROM procrastinate_workers
        WHERE last_heartbeat < now() - seconds_since_heartbeat * interval '1 second'
        RETURNING procrastinate_workers.id;
END;
$$;

-- §5 Procrastinate's row-level trigger functions ---------------------------------------------------
-- Part of the catalog.  tarry's own triggers (further down) do not use them, except the delete one;
-- spec/fixtures/procrastinate_triggers.sql attaches them the way Procrastinate does.

CREATE FUNCTION procrastinate_notify_queue_job_inserted_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    payload text := json_build_object('type', 'job_inserted', 'job_id', NEW.id)::text;
BEGIN
    PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
    PERFORM pg_notify('procrastinate_any_queue_v1', payload);
    RETURN NEW;
END;
$$;

CREATE FUNCTION procrastinate_notify_queue_abort_job_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    payload text := json_build_object('type', 'abort_job_requested', 'job_id', NEW.id)::text;
BEGIN
    PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
    PERFORM pg_notify('procrastinate_any_queue_v1', payload);
    RETURN NEW;
END;
$$;

CREATE FUNCTION procrastinate_trigger_function_status_events_insert_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO procrastinate_events (job_id, type) VALUES (NEW.id, 'deferred');
    RETURN NEW;
END;
$$;

-- The (old status -> new status) mapping of §5; tarry_jobs_update_events() repeats it.
CREATE FUNCTION procrastinate_trigger_function_status_events_update_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    event procrastinate_job_event_type;
BEGIN
    event := CASE
        WHEN OLD.status = 'todo' AND NEW.status = 'doing' THEN 'started'
        WHEN OLD.status = 'doing' AND NEW.status = 'todo' THEN 'deferred_for_retry'
        WHEN OLD.status = 'doing' AND NEW.status = 'failed' THEN 'failed'
        WHEN OLD.status = 'doing' AND NEW.status = 'succeeded' THEN 'succeeded'
        WHEN OLD.status = 'todo' AND NEW.status IN ('cancelled', 'failed', 'succeeded') THEN 'cancelled'
        WHEN OLD.status = 'doing' AND NEW.status = 'aborted' THEN 'aborted'
        WHEN OLD.status = 'failed' AND NEW.status = 'todo' THEN 'retried'
    END::procrastinate_job_event_type;
    IF event IS NOT NULL THEN
        INSERT INTO procrastinate_events (job_id, type) VALUES (NEW.id, event);
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION procrastinate_trigger_function_scheduled_events_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO procrastinate_events (job_id, type, at)
    VALUES (NEW.id, 'scheduled', NEW.scheduled_at);
    RETURN NEW;
END;
$$;

CREATE FUNCTION procrastinate_trigger_abort_requested_events_procedure_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO procrastinate_events (job_id, type) VALUES (NEW.id, 'abort_requested');
    RETURN NEW;
END;
$$;

CREATE FUNCTION procrastinate_unlink_periodic_defers_v1()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE procrastinate_periodic_defers SET job_id = NULL WHERE job_id = OLD.id;
    RETURN OLD;
END;
$$;

-- tarry's triggers -----------------------------------------------------------------------------------
-- Statement-level, with transition tables: one trigger call per statement writes the event rows
-- of all its jobs in one INSERT, and sends one job_inserted NOTIFY per queue.  Event ids keep the
-- order the row-level triggers give: jobs in the order the statement processed them, and per job
-- scheduled before deferred (INSERT), abort_requested before scheduled before the status event
-- (UPDATE).  Row order comes from the transition table (row_number() over its scan order).

-- INSERT: scheduled (at = scheduled_at) then deferred for each todo job; NOTIFY per queue.
-- The event rows come out of the nested loop in its order, the transition table's scan order
-- times the VALUES' (the lateral reference keeps VALUES inside), which is the order wanted: no
-- row_number() and no sort, which cost a single-job defer about 9% of its backend instructions.
CREATE FUNCTION tarry_jobs_insert_events()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO procrastinate_events (job_id, type, at)
    SELECT job.id, event.type, event.at
    FROM inserted_jobs AS job
    CROSS JOIN LATERAL (VALUES
        ('scheduled'::procrastinate_job_event_type, job.scheduled_at),
        ('deferred'::procrastinate_job_event_type, now())
    ) AS event (type, at)
    WHERE job.status = 'todo' AND (event.type = 'deferred' OR job.scheduled_at IS NOT NULL);

    -- Workers only use these as a wake-up: one per queue (naming its first new job) is enough.
    -- A queue name over 40 bytes makes pg_notify fail with 22023, as with the row-level triggers.
    PERFORM pg_notify(channel.name, queue.payload)
    FROM (
        SELECT inserted.queue_name,
               json_build_object('type', 'job_inserted', 'job_id', min(inserted.id))::text AS payload
        FROM inserted_jobs AS inserted
        WHERE inserted.status = 'todo'
        GROUP BY inserted.queue_name
    ) AS queue
    CROSS JOIN LATERAL (VALUES
        (1, 'procrastinate_queue_v1#' || queue.queue_name),
        (2, 'procrastinate_any_queue_v1')
    ) AS channel (rank, name)
    ORDER BY queue.queue_name, channel.rank;

    RETURN NULL;
END;
$$;

-- Procrastinate's abort_requested event fires on every UPDATE whose SET list names abort_requested
-- (even when the value does not change).  A trigger with transition tables cannot have a column
-- list, so this column-list statement trigger only records "abort_requested was in the SET list"
-- in a transaction-local setting; it fires just before tarry_jobs_update_events (triggers of the
-- same kind fire in name order), which reads and clears it.
CREATE FUNCTION tarry_jobs_note_abort_requested_set()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM set_config('tarry.abort_requested_in_set', 'on', true);
    RETURN NULL;
END;
$$;

-- UPDATE: per job, abort NOTIFY and abort_requested event, scheduled event, status event.
--
-- tarry's batch functions (below) tell the trigger what their UPDATE does, in the transaction-local
-- setting tarry.update_events, set just before the statement and cleared just after it:
--   'started'   every row went todo -> doing (a fetch): a started event each;
--   'finished'  every row went doing -> succeeded, failed or aborted, abort_requested set to false
--               (a finish): the event named like the new status;
--   'retried'   every row went doing -> todo with scheduled_at set, or doing -> failed for a job
--               whose abort was requested (a retry): scheduled at scheduled_at, then
--               deferred_for_retry; or failed.
-- None of these names abort_requested in a way that writes an abort event or notification.  The
-- rows are then the events, in the same order, without the general query's join of the old and
-- new rows, its numbering and its sort: about 70,000 instead of 125,000 instructions per event
-- row (callgrind, batches of 100; most of what is left is the event row itself, its three
-- indexes and its foreign key check).  Any other UPDATE takes the general query.  The setting
-- cannot outlive its statement: it is cleared after it, and an error rolls it back with the
-- (sub)transaction.  A schema with Procrastinate's row-level triggers ignores the setting.
CREATE FUNCTION tarry_jobs_update_events()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    abort_in_set boolean := current_setting('tarry.abort_requested_in_set', true) = 'on';
    known text := current_setting('tarry.update_events', true);
BEGIN
    IF known IN ('started', 'finished', 'retried') THEN
        IF abort_in_set THEN
            PERFORM set_config('tarry.abort_requested_in_set', 'off', true);
        END IF;
        IF current_setting('tarry.skip_events', true) = 'on' THEN
            RETURN NULL;  -- a lean worker's fetch or finish (tarry_finish_fetch_jobs_v1)
        END IF;
        IF known = 'started' THEN
            INSERT INTO procrastinate_events (job_id, type)
            SELECT job.id, 'started' FROM new_jobs AS job;
        ELSIF known = 'finished' THEN
            INSERT INTO procrastinate_events (job_id, type)
            SELECT job.id, job.status::text::procrastinate_job_event_type FROM new_jobs AS job;
        ELSE
            INSERT INTO procrastinate_events (job_id, type, at)
            SELECT job.id, event.type, event.at
            FROM new_jobs AS job
            CROSS JOIN LATERAL (VALUES
                (CASE WHEN job.status = 'todo' AND job.scheduled_at IS NOT NULL
                      THEN 'scheduled'::procrastinate_job_event_type END, job.scheduled_at),
                (CASE WHEN job.status = 'todo' THEN 'deferred_for_retry'::procrastinate_job_event_type
                      ELSE 'failed' END, now())
            ) AS event (type, at)
            WHERE event.type IS NOT NULL;
        END IF;
        RETURN NULL;
    END IF;

    IF abort_in_set THEN
        PERFORM set_config('tarry.abort_requested_in_set', 'off', true);

        -- Abort notifications stay one per job: the worker reads job_id.  Sent when the flag
        -- goes from false to true on a doing job.  Like Procrastinate's UPDATE OF trigger, only
        -- when abort_requested was in the SET list, which also spares fetch and finish this query.
        PERFORM pg_notify(channel.name, job.payload)
        FROM (
            SELECT new_job.id, new_job.queue_name,
                   json_build_object('type', 'abort_job_requested', 'job_id', new_job.id)::text AS payload
            FROM new_jobs AS new_job
            JOIN old_jobs AS old_job ON old_job.id = new_job.id
            WHERE NOT old_job.abort_requested AND new_job.abort_requested AND new_job.status = 'doing'
        ) AS job
        CROSS JOIN LATERAL (VALUES
            (1, 'procrastinate_queue_v1#' || job.queue_name),
            (2, 'procrastinate_any_queue_v1')
        ) AS channel (rank, name)
        ORDER BY job.id, channel.rank;
    END IF;

    IF current_setting('tarry.skip_events', true) = 'on' THEN
        RETURN NULL;      -- a lean worker's fetch or finish (tarry_finish_fetch_jobs_v1)
    END IF;

    INSERT INTO procrastinate_events (job_id, type, at)
    SELECT job.id, event.type, event.at
    FROM (SELECT row_number() OVER () AS position, updated.* FROM new_jobs AS updated) AS job
    JOIN old_jobs AS old_job ON old_job.id = job.id
    CROSS JOIN LATERAL (VALUES
        (1, CASE WHEN abort_in_set AND job.abort_requested
                 THEN 'abort_requested'::procrastinate_job_event_type END, now()),
        (2, CASE WHEN job.status = 'todo' AND job.scheduled_at IS NOT NULL
                 THEN 'scheduled'::procrastinate_job_event_type END, job.scheduled_at),
        -- §5's mapping; an unchanged status maps to no event, so it does not matter that a
        -- statement trigger cannot tell whether status was in the SET list.
        (3, CASE
                WHEN old_job.status = 'todo' AND job.status = 'doing' THEN 'started'
                WHEN old_job.status = 'doing' AND job.status = 'todo' THEN 'deferred_for_retry'
                WHEN old_job.status = 'doing' AND job.status = 'failed' THEN 'failed'
                WHEN old_job.status = 'doing' AND job.status = 'succeeded' THEN 'succeeded'
                WHEN old_job.status = 'todo' AND job.status IN ('cancelled', 'failed', 'succeeded')
                    THEN 'cancelled'
                WHEN old_job.status = 'doing' AND job.status = 'aborted' THEN 'aborted'
                WHEN old_job.status = 'failed' AND job.status = 'todo' THEN 'retried'
            END::procrastinate_job_event_type, now())
    ) AS event (rank, type, at)
    WHERE event.type IS NOT NULL
    ORDER BY job.position, event.rank;

    RETURN NULL;
END;
$$;

CREATE TRIGGER tarry_jobs_insert_events
    AFTER INSERT ON procrastinate_jobs
    REFERENCING NEW TABLE AS inserted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tarry_jobs_insert_events();

-- Name sorts before tarry_jobs_update_events: it must fire first.
CREATE TRIGGER tarry_jobs_note_abort_requested_set
    AFTER UPDATE OF abort_requested ON procrastinate_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tarry_jobs_note_abort_requested_set();

CREATE TRIGGER tarry_jobs_update_events
    AFTER UPDATE ON procrastinate_jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tarry_jobs_update_events();

-- The one row-level trigger: the markers must be unlinked BEFORE the rows go, because the FK's
-- NO ACTION check runs as a row-level AFTER trigger, ahead of any AFTER STATEMENT trigger, and
-- transition tables exist only for AFTER triggers.
CREATE TRIGGER tarry_jobs_unlink_periodic_defers
    BEFORE DELETE ON procrastinate_jobs
    FOR EACH ROW EXECUTE FUNCTION procrastinate_unlink_periodic_defers_v1();

-- tarry's batch functions ---------------------------------------------------------------------------
-- The worker's fast path (tarry/pg_jobs.lua uses them when they exist, and the procrastinate_*
-- functions otherwise). Each is one set-based statement per step, so the triggers run once per
-- batch instead of once per job; the rules are exactly those of the single-job functions.

-- Up to max_jobs jobs, with procrastinate_fetch_job_v2's eligibility, order and lock rule. Only the
-- first todo job of a lock (by priority DESC, id ASC) can be eligible, so a batch never holds two
-- jobs of one lock; rows other workers have locked are skipped.
CREATE FUNCTION tarry_fetch_jobs_v1(target_queue_names character varying[], p_worker_id bigint,
                                    max_jobs integer)
RETURNS SETOF procrastinate_jobs
LANGUAGE plpgsql
-- The planner's cost estimate of the lock rule grows with max_jobs, and past a few hundred jobs
-- crosses jit_above_cost: compiling the query then costs more than running it.
SET jit = off
-- For every queue (no list), the generic plan is the custom one: the priority index in order, up
-- to max_jobs rows, then the primary key for the UPDATE (whatever the row estimate, as the UPDATE
-- takes its rows by id).  Planning it on every call cost more than running it for a few jobs
-- (callgrind: 2.1 -> 0.7 million instructions for a fetch of one job).  For a list of queues the
-- plan depends on the list (how selective the queues are: the queue index may beat the priority
-- order), so those calls keep custom plans (the setting reverts when the function returns).
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF target_queue_names IS NOT NULL THEN
        PERFORM set_config('plan_cache_mode', 'force_custom_plan', true);
    END IF;
    PERFORM set_config('tarry.update_events', 'started', true);  -- see tarry_jobs_update_events
    RETURN QUERY
    WITH candidate AS (
        SELECT job.id
        FROM procrastinate_jobs AS job
        WHERE job.status = 'todo'
          AND (target_queue_names IS NULL OR job.queue_name = ANY (target_queue_names))
          AND (job.scheduled_at IS NULL OR job.scheduled_at <= now())
          AND (job.lock IS NULL OR NOT EXISTS (
                SELECT 1
                FROM procrastinate_jobs AS other
                WHERE other.lock = job.lock
                  AND (other.status = 'doing'
                       OR (other.status = 'todo'
                           AND (other.priority > job.priority
                                OR (other.priority = job.priority AND other.id < job.id))))
              ))
        ORDER BY job.priority DESC, job.id ASC
        LIMIT max_jobs
        FOR UPDATE OF job SKIP LOCKED
    ), taken AS (
        UPDATE procrastinate_jobs AS job
        SET status = 'doing', worker_id = p_worker_id
        WHERE job.id = ANY (ARRAY(SELECT candidate.id FROM candidate))
        RETURNING job.*
    )
    SELECT * FROM taken ORDER BY taken.priority DESC, taken.id ASC;
    PERFORM set_config('tarry.update_events', '', true);
END;
$$;

-- The outcomes of many jobs: where retry_at_epochs[i] is NULL, procrastinate_finish_job_v1(id,
-- end_statuses[i], delete_jobs[i]); else procrastinate_retry_job_v2(id, to_timestamp(retry_at),
-- NULL, NULL, NULL); as if called element by element in array order, all or nothing.  Returns the
-- number of elements.
-- One difference, on purpose: a job the batch takes out of `doing` loses its worker_id (the single
-- functions leave it).  A finished row then no longer points at a worker, so deleting that worker
-- (unregister, prune) has nothing to update through the foreign key's ON DELETE SET NULL, however
-- many finished jobs it once ran (procrastinate#1454: minutes per worker start on 13M jobs).
-- The set-based statements below are only equivalent to those calls when no call fails and no call
-- depends on an earlier one.  Whenever that is not certain (a call would raise, the same job comes
-- twice, a retry could hit a queueing-lock conflict whose outcome depends on the order), the
-- function makes the single-job calls themselves, in array order: the result, or the error of the
-- first failing element, is then theirs by construction, and the error rolls the whole batch back.
CREATE FUNCTION tarry_finish_jobs_v1(job_ids bigint[], end_statuses procrastinate_job_status[],
                                     delete_jobs boolean[], retry_at_epochs double precision[])
RETURNS integer
LANGUAGE plpgsql
-- Its statements' generic plans are as good as custom ones (an id list against the primary key),
-- and re-planning them on every call cost more than running them (0.43 -> 0.16 ms per call here).
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
DECLARE
    _item record;
    _count integer := 0;
    _all_doing boolean;  -- every job of the batch is doing (a worker's outcomes)
    _twice boolean;      -- a NULL id, or the same job twice
    _deletes boolean;    -- the batch has elements of each kind
    _finishes boolean;
    _retries boolean;
BEGIN
    -- Lock the rows in id order (concurrent batches cannot deadlock on each other), then check
    -- them against what each single-job call requires.
    SELECT coalesce(bool_and(locked.status = 'doing'), true) INTO _all_doing
    FROM (SELECT job.status FROM procrastinate_jobs AS job WHERE job.id = ANY (job_ids)
          ORDER BY job.id FOR UPDATE) AS locked;
    SELECT count(*) <> count(DISTINCT o.id), coalesce(bool_or(o.retry_at IS NULL AND o.del), false),
           coalesce(bool_or(o.retry_at IS NULL AND NOT coalesce(o.del, false)), false),
           coalesce(bool_or(o.retry_at IS NOT NULL), false)
    INTO _twice, _deletes, _finishes, _retries
    FROM unnest(job_ids, delete_jobs, retry_at_epochs) AS o(id, del, retry_at);

    IF _twice OR EXISTS (
        SELECT 1
        FROM unnest(job_ids, end_statuses, retry_at_epochs) AS o(id, status, retry_at)
        LEFT JOIN procrastinate_jobs AS job ON job.id = o.id
        WHERE job.id IS NULL
           -- finish: the end status, then the row must be todo or doing
           OR (o.retry_at IS NULL
               AND (o.status IS NULL OR o.status NOT IN ('succeeded', 'failed', 'aborted')
                    OR job.status NOT IN ('todo', 'doing')))
           -- retry: the row must be doing or failed, and a failed one with abort_requested
           -- would break check_not_todo_abort_requested (23514)
           OR (o.retry_at IS NOT NULL
               AND (job.status NOT IN ('doing', 'failed') OR (job.status = 'failed' AND job.abort_requested)))
           -- retry to todo of a job with a queueing lock that another todo job holds, or that
           -- another job of the batch has: 23505 or not depends on the order of the calls
           OR (o.retry_at IS NOT NULL AND job.queueing_lock IS NOT NULL AND NOT job.abort_requested
               AND EXISTS (SELECT 1 FROM procrastinate_jobs AS other
                           WHERE other.queueing_lock = job.queueing_lock AND other.id <> job.id
                             AND (other.status = 'todo' OR other.id = ANY (job_ids))))
    ) THEN
        -- Every doing row of a batch that succeeds leaves doing, so its worker_id can go first:
        -- an UPDATE of a doing row that changes neither status nor abort_requested writes no event.
        UPDATE procrastinate_jobs SET worker_id = NULL
        WHERE id = ANY (job_ids) AND status = 'doing' AND worker_id IS NOT NULL;
        FOR _item IN
            SELECT o.id, o.status, o.del, o.retry_at
            FROM unnest(job_ids, end_statuses, delete_jobs, retry_at_epochs) WITH ORDINALITY
                 AS o(id, status, del, retry_at, position)
            ORDER BY o.position
        LOOP
            IF _item.retry_at IS NULL THEN
                PERFORM procrastinate_finish_job_v1(_item.id, _item.status, _item.del);
            ELSE
                PERFORM procrastinate_retry_job_v2(_item.id, to_timestamp(_item.retry_at), NULL, NULL, NULL);
            END IF;
            _count := _count + 1;
        END LOOP;
        RETURN _count;
    END IF;

    -- A statement only for the kinds the batch has (an UPDATE runs its trigger even for no rows).
    -- When every job was doing, the trigger is told what each UPDATE does (tarry_jobs_update_events).
    IF _deletes THEN
        DELETE FROM procrastinate_jobs AS job
        USING unnest(job_ids, delete_jobs, retry_at_epochs) AS o(id, del, retry_at)
        WHERE job.id = o.id AND o.retry_at IS NULL AND o.del;
    END IF;

    IF _finishes THEN
        IF _all_doing THEN
            PERFORM set_config('tarry.update_events', 'finished', true);
        END IF;
        UPDATE procrastinate_jobs AS job
        SET status = o.status,
            abort_requested = false,
            attempts = CASE WHEN job.status = 'doing' THEN job.attempts + 1 ELSE job.attempts END,
            worker_id = CASE WHEN job.status = 'doing' THEN NULL ELSE job.worker_id END
        FROM unnest(job_ids, end_statuses, delete_jobs, retry_at_epochs) AS o(id, status, del, retry_at)
        WHERE job.id = o.id AND o.retry_at IS NULL AND NOT coalesce(o.del, false);
        PERFORM set_config('tarry.update_events', '', true);
    END IF;

    IF NOT _retries THEN
        RETURN coalesce(cardinality(job_ids), 0);  -- a NULL array: no calls, 0
    END IF;
    IF _all_doing THEN
        PERFORM set_config('tarry.update_events', 'retried', true);
    END IF;
    UPDATE procrastinate_jobs AS job
    SET status = CASE WHEN job.status = 'doing' AND job.abort_requested
                      THEN 'failed'::procrastinate_job_status ELSE 'todo' END,
        attempts = CASE WHEN job.status = 'doing' AND job.abort_requested
                        THEN job.attempts ELSE job.attempts + 1 END,
        scheduled_at = CASE WHEN job.status = 'doing' AND job.abort_requested
                            THEN job.scheduled_at ELSE to_timestamp(o.retry_at) END,
        worker_id = CASE WHEN job.status = 'doing' THEN NULL ELSE job.worker_id END
    FROM unnest(job_ids, retry_at_epochs) AS o(id, retry_at)
    WHERE job.id = o.id AND o.retry_at IS NOT NULL;
    PERFORM set_config('tarry.update_events', '', true);

    RETURN cardinality(job_ids);
END;
$$;

-- The worker's one round trip: the outcomes of the jobs that ended (tarry_finish_jobs_v1, all or
-- nothing), then up to max_jobs new jobs (tarry_fetch_jobs_v1), in one transaction.  The fetch runs
-- after the finish and sees its changes: a lock the batch released, a job it retried for now.
-- Returns the jobs fetched, as tarry_fetch_jobs_v1 does.  skip_events: see below.
CREATE FUNCTION tarry_finish_fetch_jobs_v1(job_ids bigint[], end_statuses procrastinate_job_status[],
                                           delete_jobs boolean[], retry_at_epochs double precision[],
                                           target_queue_names character varying[], p_worker_id bigint,
                                           max_jobs integer, skip_events boolean)
RETURNS SETOF procrastinate_jobs
LANGUAGE plpgsql
SET jit = off
AS $$
BEGIN
    -- The worker's lean mode: no procrastinate_events rows for these changes (tarry_jobs_update_events
    -- reads the flag); only for this call, and never the notifications.
    IF skip_events THEN
        PERFORM set_config('tarry.skip_events', 'on', true);
    END IF;
    IF cardinality(job_ids) > 0 THEN
        PERFORM tarry_finish_jobs_v1(job_ids, end_statuses, delete_jobs, retry_at_epochs);
    END IF;
    IF max_jobs > 0 THEN
        RETURN QUERY SELECT * FROM tarry_fetch_jobs_v1(target_queue_names, p_worker_id, max_jobs);
    END IF;
    IF skip_events THEN
        PERFORM set_config('tarry.skip_events', 'off', true);
    END IF;
END;
$$;

-- Retention and periodic defers (tarry/pg_jobs.lua) ------------------------------------------------

-- delete_old_jobs looks for jobs whose latest event is older than a cutoff.  With this index it
-- starts from the events older than the cutoff, so a run that finds little to delete reads little,
-- instead of every job's events (measured in scripts/bench.lua).  It is not part of
-- Procrastinate's catalog; without it (a schema Procrastinate applied) the same query scans.
CREATE INDEX tarry_events_at_idx_v1 ON procrastinate_events (at);

-- One tick of a periodic task for tarry's workers: procrastinate_defer_periodic_job_v2, with the
-- callers of one (task, periodic id) serialised by a transaction-scoped advisory lock, and the
-- tick skipped when it, or a later one, already has a marker.  The protocol function keeps only
-- the newest marker, so a worker late on an older tick would otherwise find no marker for it and
-- defer it a second time.  A marker further in the future than a minute comes from a machine
-- whose clock runs fast: it does not hold the task back.
CREATE FUNCTION tarry_defer_periodic_job_v1(
    _queue_name character varying,
    _lock character varying,
    _queueing_lock character varying,
    _task_name character varying,
    _priority integer,
    _periodic_id character varying,
    _defer_timestamp bigint,
    _args jsonb
)
RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('tarry_periodic:' || _task_name || ':' || _periodic_id, 0));
    IF EXISTS (
        SELECT 1 FROM procrastinate_periodic_defers
        WHERE task_name = _task_name AND periodic_id = _periodic_id
          AND defer_timestamp >= _defer_timestamp
          AND defer_timestamp <= extract(epoch FROM now())::bigint + 60
    ) THEN
        RETURN NULL;
    END IF;
    RETURN procrastinate_defer_periodic_job_v2(_queue_name, _lock, _queueing_lock, _task_name, _priority,
                                               _periodic_id, _defer_timestamp, _args);
END;
$$;

-- Stalled-job recovery (tarry/worker/recovery.lua) ---------------------------------------------

-- Deleting a worker (unregister, prune) sets worker_id to NULL on its jobs through the foreign key,
-- whose query (worker_id = $1) no index of Procrastinate's can serve: it scans the table.  tarry's
-- paths clear worker_id when a job leaves doing, so this index holds little more than the running
-- jobs, and the foreign key's update finds them through it.  Measured with 1M finished jobs: an
-- unregister took 12-23 s when they all pointed at the worker (Procrastinate's finish keeps it),
-- 0.15-0.18 s once they did not, and 1 ms with this index.
CREATE INDEX tarry_jobs_worker_id_idx_v1 ON procrastinate_jobs (worker_id) WHERE worker_id IS NOT NULL;

-- Puts back jobs left `doing` by a worker that stopped sending heartbeats.  Element i names a job,
-- the worker it was seen with (worker_ids[i], NULL when its worker row was gone) and what to do with
-- it: retry_at_epochs[i] set: procrastinate_retry_job_v2(id, to_timestamp(retry_at), NULL, NULL,
-- NULL), or, when a waiting job holds its queueing lock (the retry would fail with 23505),
-- procrastinate_finish_job_v1(id, 'failed', false); retry_at NULL: procrastinate_finish_job_v1(id,
-- end_statuses[i] (NULL: failed), false).
-- Each job is recovered only if it is still doing, still with that worker, and that worker is still
-- silent for seconds_since_heartbeat (or gone), checked on the row locked for the change: many
-- workers may recover at once, and a job is put back once (rows another transaction holds are
-- skipped: whoever holds them is recovering them, or the next round will see them).  Its worker_id
-- is cleared first, while it is still doing (which writes no event).  Returns the jobs recovered and
-- their status afterwards; the others are left alone.
CREATE FUNCTION tarry_recover_stalled_jobs_v1(seconds_since_heartbeat double precision, job_ids bigint[],
                                              worker_ids bigint[], end_statuses procrastinate_job_status[],
                                              retry_at_epochs double precision[])
RETURNS TABLE(recovered_id bigint, new_status procrastinate_job_status)
LANGUAGE plpgsql
AS $$
DECLARE
    _job record;
BEGIN
    FOR _job IN
        SELECT job.id, job.queueing_lock, o.status, o.retry_at
        FROM procrastinate_jobs AS job
        JOIN unnest(job_ids, worker_ids, end_statuses, retry_at_epochs) AS o(id, worker_id, status, retry_at)
          ON o.id = job.id
        WHERE job.status = 'doing'
          AND job.worker_id IS NOT DISTINCT FROM o.worker_id
          AND NOT EXISTS (SELECT 1 FROM procrastinate_workers AS w
                          WHERE w.id = job.worker_id
                            AND w.last_heartbeat >= now() - seconds_since_heartbeat * interval '1 second')
        ORDER BY job.id
        FOR UPDATE OF job SKIP LOCKED
    LOOP
        UPDATE procrastinate_jobs SET worker_id = NULL WHERE id = _job.id AND worker_id IS NOT NULL;
        IF _job.retry_at IS NOT NULL AND (_job.queueing_lock IS NULL OR NOT EXISTS (
               SELECT 1 FROM procrastinate_jobs AS other
               WHERE other.queueing_lock = _job.queueing_lock AND other.status = 'todo')) THEN
            PERFORM procrastinate_retry_job_v2(_job.id, to_timestamp(_job.retry_at), NULL, NULL, NULL);
        ELSE
            PERFORM procrastinate_finish_job_v1(_job.id, coalesce(_job.status, 'failed'), false);
        END IF;
        RETURN QUERY SELECT job.id, job.status FROM procrastinate_jobs AS job WHERE job.id = _job.id;
    END LOOP;
END;
$$;

-- The dashboard (tarry/dashboard/) ---------------------------------------------------------------

-- What a failed attempt raised: its message and traceback, written by tarry's worker after it
-- recorded the outcome (tarry/dashboard/errors.lua), shown in a job's detail.  Procrastinate's
-- tables have no room for it.  One row per attempt.  No foreign key (procrastinate_jobs stays
-- truncatable, and its deletes pay nothing): the dashboard deletes a job's errors with the job,
-- a job deleted elsewhere leaves rows that no job id will ever match again (ids are not reused),
-- and retention (app.jobs:delete_old, remove_old_jobs) deletes those once they are old enough.
CREATE TABLE tarry_job_errors_v1 (
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    at timestamp with time zone NOT NULL DEFAULT now(),
    message text NOT NULL,
    traceback text,
    PRIMARY KEY (job_id, attempt)
);
