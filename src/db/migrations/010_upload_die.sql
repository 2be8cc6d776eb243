-- The top cell's geometry, read at upload with the cells (issue 15): `die_cell` names the top
-- cell when the layout has exactly one (NULL otherwise, and for uploads made before this
-- version, whose prechecks are not checked for geometry); its box in database units (NULL when
-- it holds no shape); its layers as "layer/datatype" separated by spaces, sorted.

ALTER TABLE uploads ADD COLUMN die_cell TEXT;
ALTER TABLE uploads ADD COLUMN die_left INTEGER;
ALTER TABLE uploads ADD COLUMN die_bottom INTEGER;
ALTER TABLE uploads ADD COLUMN die_right INTEGER;
ALTER TABLE uploads ADD COLUMN die_top INTEGER;
ALTER TABLE uploads ADD COLUMN die_layers TEXT;
