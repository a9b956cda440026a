raise NotImplementedError('scripts/ingest.py is being written')
