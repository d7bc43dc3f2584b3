"""Label recipes: each public data set's published label files -> our labels CSV (`mammodino labels`).

published.py reads the data sets' files, recipes.py and mini_mias.py turn them into rows, and
convert.py writes the CSV. mini_mias.py also knows which woman a mini-MIAS image belongs to.
"""
