/*
 * persistent.c - torch storages as pickles name them: the persistent id
 * ('storage', storage_type, key, location, numel[, view]) and the storage
 * classes (torch.FloatStorage, ...) it names.
 */
#include "pickle.h"

ckpt_dtype ckpt__storage_type_dtype(const ckpt_value *global, bool *untyped)
{
    static const ckpt_dtype dtypes[] = {
        [CKPT__G_DOUBLE_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_FLOAT64,
        [CKPT__G_FLOAT_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_FLOAT32,
        [CKPT__G_HALF_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_FLOAT16,
        [CKPT__G_BFLOAT16_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_BFLOAT16,
        [CKPT__G_LONG_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_INT64,
        [CKPT__G_INT_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_INT32,
        [CKPT__G_SHORT_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_INT16,
        [CKPT__G_CHAR_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_INT8,
        [CKPT__G_BYTE_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_UINT8,
        [CKPT__G_BOOL_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_BOOL,
        [CKPT__G_COMPLEX_DOUBLE_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_COMPLEX128,
        [CKPT__G_COMPLEX_FLOAT_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_COMPLEX64,
        [CKPT__G_QINT8_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_QINT8,
        [CKPT__G_QINT32_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_QINT32,
        [CKPT__G_QUINT8_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_QUINT8,
        [CKPT__G_QUINT4X2_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_QUINT4X2,
        [CKPT__G_QUINT2X4_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_QUINT2X4,
        [CKPT__G_COMPLEX_HALF_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_COMPLEX32,
        [CKPT__G_UNTYPED_STORAGE - CKPT__G_STORAGE_FIRST_] = CKPT_DTYPE_UINT8,
    };
    if (untyped)
        *untyped = false;
    if (!global || global->kind != CKPT_KIND_GLOBAL || global->global_id < CKPT__G_STORAGE_FIRST_ ||
        global->global_id > CKPT__G_STORAGE_LAST_)
        return CKPT_DTYPE_INVALID;
    if (untyped)
        *untyped = global->global_id == CKPT__G_UNTYPED_STORAGE;
    return dtypes[global->global_id - CKPT__G_STORAGE_FIRST_];
}

static bool is_str(const ckpt_value *v) { return v && v->kind == CKPT_KIND_STR; }

ckpt_status ckpt__storage_pid_parse(const ckpt_value *pid, size_t items, const char *record,
                                    uint64_t offset, ckpt__storage_pid *out, ckpt_error *err)
{
    memset(out, 0, sizeof(*out));
    if (pid && pid->kind == CKPT_KIND_STR)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, offset,
                          "persistent id is text (PERSID of pickle protocol 0): torch.load "
                          "cannot read such a file either");
    if (!pid || pid->kind != CKPT_KIND_TUPLE || pid->u.seq.len < 1)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "persistent id is not a tuple");
    ckpt_value **it = pid->u.seq.items;
    if (!is_str(it[0]) || strcmp(it[0]->u.s.ptr, "storage") != 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, offset,
                          "persistent id of type '%s' (only 'storage' is known)",
                          is_str(it[0]) ? it[0]->u.s.ptr : ckpt_kind_name(ckpt_value_kind(it[0])));
    if (pid->u.seq.len != items)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage persistent id has %zu items, expected %zu", pid->u.seq.len,
                          items);
    out->dtype = ckpt__storage_type_dtype(it[1], &out->untyped);
    if (out->dtype == CKPT_DTYPE_INVALID)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage type is not a torch storage class");
    /* keys name records ("data/<key>"): no path tricks */
    if (!is_str(it[2]) || it[2]->u.s.len == 0 || it[2]->u.s.len > 64 ||
        strlen(it[2]->u.s.ptr) != it[2]->u.s.len || strchr(it[2]->u.s.ptr, '/') ||
        strstr(it[2]->u.s.ptr, ".."))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage key is not a plain name of 1 to 64 bytes");
    if (!is_str(it[3]))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "storage location is not a string");
    if (it[4]->kind != CKPT_KIND_INT || it[4]->u.i < 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage size is not a non-negative integer");
    out->numel = (uint64_t)it[4]->u.i;
    if (!ckpt__mul_u64(out->numel, ckpt__storage_elem_size(out->dtype), &out->nbytes))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "storage size overflows");
    out->key = it[2]->u.s.ptr;
    out->key_len = it[2]->u.s.len;
    out->location = it[3]->u.s.ptr;
    out->view = items > 5 ? it[5] : NULL;
    return CKPT_OK;
}
