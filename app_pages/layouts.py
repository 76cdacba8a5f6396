"""Layouts page: the prescribed sparsity patterns, their density and their exact mask."""

import streamlit as st

from kernels import layouts as L

st.title("Sparse attention layouts")
st.caption(
    "Which earlier tokens each query may attend to, for the Sparse Transformer's layouts "
    "(Child et al. 2019). A 28x28 gray image is 784 tokens; one image row is l = 28 tokens."
)

n = st.number_input("Sequence length N", min_value=1, max_value=4096, value=784, key="lay_n")
l = st.number_input("Stride / block length l", min_value=1, max_value=4096, value=28, key="lay_l")
c = st.number_input("Summary width c (fixed)", min_value=1, max_value=4096, value=4, key="lay_c")

rows = []
for make in (L.dense, lambda: L.local(l), lambda: L.strided(l), lambda: L.fixed(l, c)):
    try:
        layout = make()
    except ValueError as e:
        st.error(str(e))
        continue
    rows.append({"layout": repr(layout), "nnz": layout.nnz(n), "density": layout.density(n)})
st.dataframe(rows, hide_index=True, key="lay_table")

choice = st.radio("Mask to show", [r["layout"] for r in rows], horizontal=True, key="lay_choice")
if choice is not None and n <= 1024:
    st.image(
        (~L.parse_layout(choice).dense_mask(n)[0]).numpy().astype("uint8") * 255,
        caption=f"{choice}: black = allowed (row = query i, column = key j)",
        width=min(4 * n, 600),
    )
elif choice is not None:
    st.info("The full mask is drawn for N <= 1024.")
