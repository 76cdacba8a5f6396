"""Figures and exports built from arrays: never imports streamlit, never loads or runs a model
(analysis/ makes the arrays; docs/DESIGN.md, "Layering").

    pixels          one image's pixels, clickable: a pixel view, the weights over the image
    maps            N x N maps, query down and key across: a layout's mask, a head's attention
    mosaics         small maps side by side as one heatmap: every layer x head, per-layer rows
    head_tables     a number or a type per layer and head as a coloured table
    charts          numbers on axes: layout search, distributions, curves, bits/dim
    frontier_figure, race_figures, speed_figure    the frontier, the race, the kernels' speed
    layout_view     a layout as arrays of part codes, exact or pooled
    grid            labelled grids of images (Pillow)
    style           the colours, colour scales and plotly pieces the figures share
    export          PNG, SVG, PDF, HTML and NPZ of any of them, with metadata
"""
