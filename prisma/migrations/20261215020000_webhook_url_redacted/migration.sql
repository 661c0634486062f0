-- Hand-written: the webhook delivery log never holds WEBHOOK_URL's path or query.
--
-- Why: receivers commonly take their credential in the URL's path (Slack's
-- /services/T…/B…/<token>, Zapier's /hooks/catch/<id>/<token>) or query (?token=…). Releases
-- before this one stored the URL whole in webhook_deliveries.url (only user:password taken out),
-- and an attempt's error kept the start of the receiver's body, which often echoes the request's
-- path (Express: "Cannot POST /<path>"); `npm run webhooks -- failed` prints those errors. The
-- current code (src/services/webhooks.ts redactWebhookUrl, redactWebhookUrlIn) stores
-- <scheme>://<host>[:<port>]/… (or …/ for a URL without path and query) and takes the URL out of
-- the errors; the POST itself always goes to the configured URL, never to the stored one.
--
-- 1. webhook_url_redacted(url): redactWebhookUrl in SQL, for the URLs the code stores (WHATWG
--    URL hrefs: lower-case scheme and host, no default port); a text that is no URL is
--    '[redacted]'. Idempotent: it leaves its own output as it is.
CREATE FUNCTION "webhook_url_redacted"(url text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT CASE WHEN p.m IS NULL THEN '[redacted]'
              ELSE p.m[1] || p.m[2] || CASE WHEN p.m[4] IN ('', '/') AND coalesce(p.m[5], '') = '' THEN '/' ELSE '/…' END END
    FROM (SELECT regexp_match(url, '^([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?#]*@)?([^/?#]*)(([^?#]*)(?:\?([^#]*))?)') AS m) p
$$;

-- 2. Rows written from now on: workers of the previous release keep storing the URL whole until
--    they are replaced (a rolling upgrade), so the row redacts it itself. The current code stores
--    it redacted already, which this leaves as it is. Created before the
--    rewrite below: its lock holds off inserts from then until this migration commits, so a row
--    an older worker adds meanwhile is either seen by the rewrite or redacted by the trigger.
CREATE FUNCTION "webhook_deliveries_redact_url"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW."url" := "webhook_url_redacted"(NEW."url");
  RETURN NEW;
END
$$;

CREATE TRIGGER "webhook_deliveries_redact_url" BEFORE INSERT OR UPDATE OF "url" ON "webhook_deliveries"
  FOR EACH ROW EXECUTE FUNCTION "webhook_deliveries_redact_url"();

-- 3. The rows already written: the URL redacted; in the error, the stored URL, its path with its
--    query, its path and its query replaced as redactWebhookUrlIn does (a part that is empty or
--    `/` is replaced by '', which replaces nothing). A token echoed on its own, without its path
--    around it, is not found here. One pass over the log, which holds WEBHOOK_LOG_RETENTION_DAYS
--    of attempts (30 by default); webhook attempts wait for it (the trigger's lock).
UPDATE "webhook_deliveries" d
   SET "url" = "webhook_url_redacted"(d."url"),
       "error" = CASE WHEN d."error" IS NULL OR p.m IS NULL THEN d."error"
                      ELSE replace(replace(replace(replace(d."error",
                             d."url", "webhook_url_redacted"(d."url")),
                             CASE WHEN p.m[3] IN ('', '/') THEN '' ELSE p.m[3] END, '/…'),
                             CASE WHEN p.m[4] IN ('', '/') THEN '' ELSE p.m[4] END, '/…'),
                             CASE WHEN coalesce(p.m[5], '') = '' THEN '' ELSE '?' || p.m[5] END, '…') END
  FROM (SELECT x."id", regexp_match(x."url", '^([A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?#]*@)?([^/?#]*)(([^?#]*)(?:\?([^#]*))?)') AS m
          FROM "webhook_deliveries" x) p
 WHERE p."id" = d."id" AND d."url" IS DISTINCT FROM "webhook_url_redacted"(d."url");
