-- A split assigns devices that match later while it runs; promotion (or a stop) ends that.
ALTER TABLE splits ADD COLUMN state TEXT NOT NULL DEFAULT 'running';
