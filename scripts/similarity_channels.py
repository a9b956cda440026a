raise NotImplementedError('scripts/similarity_channels.py is being written')
