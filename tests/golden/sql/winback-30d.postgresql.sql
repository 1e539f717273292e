SELECT customers.customer_id, to_char(timezone('UTC', customers.last_active_at), 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS occurrence, NULL AS event_ref 
FROM customers 
WHERE customers.email IS NOT NULL AND customers.purchase_count >= 1.0 AND (customers.last_emailed_at IS NULL OR customers.last_emailed_at <= '2011-12-03 00:00:00+00:00') AND customers.last_active_at <= '2011-11-10 00:00:00+00:00' AND (customers.created_at IS NULL OR customers.created_at <= '2011-12-10 00:00:00+00:00') AND NOT (EXISTS (SELECT * 
FROM enrollments 
WHERE enrollments.playbook_id = 'winback-30d' AND enrollments.customer_id = customers.customer_id AND enrollments.occurrence_key = to_char(timezone('UTC', customers.last_active_at), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))
