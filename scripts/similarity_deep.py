raise NotImplementedError('scripts/similarity_deep.py is being written')
