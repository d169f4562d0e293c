//! Reading the maps of an lb datapath that another process loaded (by program id).
