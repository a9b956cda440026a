raise NotImplementedError('scripts/similarity_cross.py is being written')
